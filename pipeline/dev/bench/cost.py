"""`claude-pipeline bench cost`: what the pipeline's cost levers save, billed by the
simulator as Anthropic bills, against the same workload sent the naive way.

One run, one worker, two partners each with an upstream key of its own (so the
simulator's bill of each key is that partner's alone):

- `naive`: every request interactive; no cache breakpoints placed for it, no
  response cache;
- `thrifty`: the same requests, with the batch-eligible ones marked
  `priority: batch` (the batch lane), a cache breakpoint placed on the shared
  system prompt (`--auto-cache on`) and the response cache on.

The workload (issue 28): 40% batch-eligible, half sharing a 2,000-token system
prompt, every request at temperature 0, and 10% exact repeats of earlier
requests, sent after the originals are answered (a repeat of a request still in
flight cannot be answered from its answer). Reported: the saving (target: at
least 40% cheaper) and, for each partner, how far the usage topic's total cost
is from the simulator's bill, per thousand requests (target: under a cent).
"""

from __future__ import annotations

import random
from typing import Any

from pipeline.client import PartnerClient, request_record
from pipeline.dev.bench.result import Progress, Result, Say
from pipeline.dev.bench.rig import BENCH_KEY, NO_LIMITS, Rig

MODEL = "claude-sonnet-4-5"
SYSTEM = "You answer for the house. Follow the house policy in every reply. " * 150
KEYS = {"naive": "sk-bench-naive", "thrifty": "sk-bench-thrifty"}
BATCH_SHARE, SHARED_SHARE, REPEAT_SHARE = 0.4, 0.5, 0.1
#: The batch lane closes a batch 2 s after its first request; the simulator ends
#: a batch a second after it is created.
LANE_ENV = {"PIPELINE_BATCH_MAX_WAIT_S": "2", "PIPELINE_BATCH_POLL_S": "0.2"}


def workload(n: int, seed: int = 28) -> list[tuple[dict[str, Any], bool]]:
    """`n` requests as (Messages API params, batch-eligible): the originals, then
    the repeats (copies of earlier originals)."""
    rng = random.Random(seed)  # noqa: S311 (a workload drawn again the same, not a secret)
    repeats = int(n * REPEAT_SHARE)
    originals = []
    for i in range(n - repeats):
        params: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 64,
            "temperature": 0,
            "messages": [{"role": "user", "content": f"question {i}: what should I do next?"}],
        }
        if i % 2 == 0:  # half share the long system prompt
            params["system"] = SYSTEM
        originals.append((params, rng.random() < BATCH_SHARE))
    return originals + [rng.choice(originals) for _ in range(repeats)]


def scenario(quick: bool, say: Say, progress: Progress) -> Result:
    n = 100 if quick else 1_000
    result = Result(
        "cost",
        {"requests": n, "batch_share": BATCH_SHARE, "shared_prefix_share": SHARED_SHARE,
         "repeat_share": REPEAT_SHARE, "model": MODEL},
        targets={"saving": ">= 0.4", "usage_vs_bill_usd_per_1k_thrifty": "<= 0.01",
                 "usage_vs_bill_usd_per_1k_naive": "<= 0.01"},
    )  # fmt: skip
    work = workload(n)
    repeats = int(n * REPEAT_SHARE)
    with Rig() as rig:
        keys = ",".join([BENCH_KEY, *KEYS.values()])
        rig.start([*NO_LIMITS, "--keys", keys, "--latency-ms", "2", "--batch-delay-s", "1"],
                  LANE_ENV)  # fmt: skip
        stack = rig.stack
        for pid, key in KEYS.items():
            thrifty = pid == "thrifty"
            stack.add_partner(
                pid,
                api_key_ref=stack.secret_file(f"{pid}.key", key),
                auto_cache=thrifty,
                response_cache_ttl_s=600 if thrifty else None,
            )
        rig.start_worker()
        ids: dict[str, list[str]] = {pid: [] for pid in KEYS}
        for wave, part in (("originals", work[: n - repeats]), ("repeats", work[n - repeats :])):
            say(f"{wave}: {len(part)} requests from each partner")
            sent = []
            for pid in KEYS:
                client = rig.client(pid)
                for params, eligible in part:
                    sent.append(_send(client, pid, params, eligible and pid == "thrifty"))
                client.flush()
                ids[pid] += sent[-len(part) :]
            if not rig.collector.wait(sent, timeout=180, progress=progress):
                raise RuntimeError(f"{wave}: not every request was answered within 180 s")
        usage = _usage_costs(rig, [i for pid in KEYS for i in ids[pid]])
        bill = rig.sim_stats()["keys"]
        cached = set(ids["thrifty"])
        hits = rig.stack.collector.read(
            lambda seen: sum(
                1 for k, rs in seen.responses.items() if k[1] in cached and rs[0].get("cached")
            )
        )
    naive, thrifty = (bill[KEYS[p]]["cost_usd"] for p in ("naive", "thrifty"))
    result.metrics.update(
        {
            "naive_usd": round(naive, 6),
            "thrifty_usd": round(thrifty, 6),
            "saving": round(1 - thrifty / naive, 4) if naive else 0.0,
            "thrifty_batched_requests": bill[KEYS["thrifty"]]["batch_requests"],
            "thrifty_cache_read_tokens": bill[KEYS["thrifty"]]["cache_read_input_tokens"],
            "thrifty_upstream_calls": sum(bill[KEYS["thrifty"]]["requests"].values()),
            "thrifty_response_cache_hits": hits,
        }
    )
    for pid in KEYS:
        recorded = sum(usage[i] for i in ids[pid])
        off = abs(recorded - bill[KEYS[pid]]["cost_usd"]) / n * 1000
        result.metrics[f"usage_vs_bill_usd_per_1k_{pid}"] = round(off, 9)
    return result


def _send(client: PartnerClient, pid: str, params: dict[str, Any], batch: bool) -> str:
    record = request_record(params, partner_id=pid, priority="batch" if batch else "interactive")
    return client.send(record)


def _usage_costs(rig: Rig, ids: list[str]) -> dict[str, float]:
    """Each request's `cost_usd`, from its usage record (once every one is read)."""
    wanted = set(ids)
    collector = rig.stack.collector
    collector.wait(lambda seen: wanted <= {k[1] for k in seen.usage}, 60)
    costs: dict[str, float] = collector.read(
        lambda seen: {
            key[1]: float(records[0]["cost_usd"])
            for key, records in seen.usage.items()
            if records and key[1] in wanted
        }
    )
    if len(costs) < len(wanted):
        raise RuntimeError(f"{len(wanted) - len(costs)} usage records not read within 60 s")
    return costs
