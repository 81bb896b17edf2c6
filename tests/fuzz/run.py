"""Run one fuzz target under atheris (libFuzzer), the pipeline instrumented for
coverage: `python -m tests.fuzz.run TARGET [libFuzzer args]`; `scripts/fuzz`
is the way in. The seeds (tests/fuzz/seeds/TARGET) start the corpus; an input
that crashes is written to tests/fuzz/crashes/ (git-ignored) to become a
regression file (tests/fuzz/regressions/TARGET) once fixed."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["pipeline"]):
    from tests.fuzz import targets


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    target = targets.TARGETS[name]
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
