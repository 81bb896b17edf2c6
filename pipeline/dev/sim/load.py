"""A raw aiohttp load generator for the simulator: how fast can "Claude" answer?

    python -m pipeline.dev.sim.load http://127.0.0.1:8765 --requests 20000 --concurrency 64

Prints one JSON line: requests, seconds, rps, statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

import aiohttp


async def run_load(url: str, requests: int, concurrency: int, key: str) -> dict[str, object]:
    body = json.dumps(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hello there, how are you today?"}],
        }
    ).encode()
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    statuses: Counter[int] = Counter()
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(f"{url}/v1/messages", data=body, headers=headers) as r:
                    await r.read()
                    statuses[r.status] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.sim.load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--key", default="sk-load")
    args = parser.parse_args(argv)
    result = asyncio.run(run_load(args.url, args.requests, args.concurrency, args.key))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
