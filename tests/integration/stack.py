"""The integration tests' pipeline: the same harness the demo and the benchmarks use."""

from pipeline.dev.harness import DEFAULT_KEY, MODEL, Key, Outcomes, Stack

__all__ = ["DEFAULT_KEY", "MODEL", "Key", "Outcomes", "Stack"]
