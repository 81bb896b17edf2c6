"""Every seed and every input that once crashed a fuzz target, through the target
on every test run: a fixed finding stays fixed without atheris."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).parent
CASES = sorted(
    (target, path)
    for target in TARGETS
    for kind in ("seeds", "regressions")
    for path in (HERE / kind / target).glob("*")
    if path.is_file()
)


def test_there_are_seeds_and_regressions_for_every_target() -> None:
    for target in TARGETS:
        assert any(t == target and "seeds" in p.parts for t, p in CASES), target
        assert any(t == target and "regressions" in p.parts for t, p in CASES), target


@pytest.mark.parametrize(
    ("target", "path"), CASES, ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in CASES]
)
def test_the_target_survives(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())
