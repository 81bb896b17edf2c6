"""A Claude API simulator the official `anthropic` SDK cannot tell from the real API.

It stands in for Claude in the demo, the integration tests and the benchmarks:
same endpoints, error envelope, status codes, rate-limit buckets and headers,
deterministic replies tied to each request, seeded faults, and prompt caching.
"""

from pipeline.dev.sim.config import FAULT_KINDS, SimConfig, parse_fail_rate
from pipeline.dev.sim.engine import ApiError, Simulator
from pipeline.dev.sim.server import SimServer, create_sim_app

__all__ = [
    "FAULT_KINDS",
    "ApiError",
    "SimConfig",
    "SimServer",
    "Simulator",
    "create_sim_app",
    "parse_fail_rate",
]
