"""What the pipeline's cost levers save, billed by the simulator as Anthropic
bills: a partner's automatic cache breakpoint on a shared system prompt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.client import request_record
from tests.integration.stack import Key, Outcomes, Stack

pytestmark = pytest.mark.integration

SYSTEM = "You follow the house policy. " * 400  # ~2,000 tokens every request shares


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("cost"), sim_args=["--latency-ms", "2"])
    try:
        yield s
    finally:
        s.close()


def _send(stack: Stack, pid: str, ids: range) -> tuple[list[Key], Outcomes]:
    keys = []
    for i in ids:
        params = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 16,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": f"question {i}"}],
        }
        stack.client(pid).send(request_record(params, partner_id=pid, request_id=f"q{i}"))
        keys.append((pid, f"q{i}"))
    stack.client(pid).flush()
    got = stack.outcomes([pid], lambda o: o.complete(keys), timeout=60)
    assert [got.responses[k][0]["status"] for k in keys] == ["ok"] * len(keys)
    return keys, got


def test_an_automatic_breakpoint_turns_a_shared_system_prompt_into_cache_reads(
    stack: Stack,
) -> None:
    bills = {}
    for pid, auto in (("autocached", True), ("uncached", False)):
        key = f"sk-{pid}"
        stack.add_partner(pid, api_key_ref=stack.secret_file(f"{pid}.key", key), auto_cache=auto)
        if not stack.workers:
            stack.start_worker()
        # the first request writes the prefix; the four after it read it
        first, _ = _send(stack, pid, range(1))
        rest, got = _send(stack, pid, range(1, 5))
        keys = first + rest
        usage = [got.usage[k][0] for k in keys]
        stats = stack.sim_stats()["keys"][key]
        bills[pid] = stats["cost_usd"]
        # what the usage topic says was spent is what the upstream billed
        assert sum(u["cost_usd"] for u in usage) == pytest.approx(bills[pid], abs=1e-9)
        reads = [u["cache_read_input_tokens"] for u in usage]
        writes = [u["cache_creation_input_tokens"] for u in usage]
        if auto:
            assert writes[0] > 1_500, usage[0]
            assert reads[1:] == [writes[0]] * 4
        else:
            assert reads == writes == [0] * 5
    # five requests: one write at 1.25x and four reads at 0.1x of the prefix,
    # against five times the prefix at 1x: about a third of the input bill
    saving = 1 - bills["autocached"] / bills["uncached"]
    assert saving > 0.6, bills


def test_an_exact_repeat_at_temperature_zero_is_answered_from_the_response_cache(
    stack: Stack,
) -> None:
    pids = ("repeater", "stranger")
    for pid in pids:
        key_ref = stack.secret_file(f"{pid}.key", f"sk-{pid}")
        stack.add_partner(pid, api_key_ref=key_ref, response_cache_ttl_s=600)
    if not stack.workers:
        stack.start_worker()

    def ask(pid: str, rid: str, temperature: float) -> tuple[dict[str, Any], dict[str, Any]]:
        params = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "temperature": temperature,
            "messages": [{"role": "user", "content": "what is six times seven"}],
        }
        stack.client(pid).send(request_record(params, partner_id=pid, request_id=rid))
        stack.client(pid).flush()
        key = (pid, rid)
        got = stack.outcomes([pid], lambda o: o.complete([key]), timeout=60)
        return got.responses[key][0], got.usage[key][0]

    first, first_usage = ask("repeater", "first", 0.0)
    again, again_usage = ask("repeater", "again", 0.0)
    warm, _ = ask("repeater", "warm", 1.0)  # may rightly differ: called
    theirs, _ = ask("stranger", "theirs", 0.0)  # another partner's cache is not theirs
    assert [r["status"] for r in (first, again, warm, theirs)] == ["ok"] * 4
    assert (first["cached"], again["cached"], warm["cached"], theirs["cached"]) == (
        False,
        True,
        False,
        False,
    )
    assert again["content"] == first["content"]
    assert first_usage["cost_usd"] > 0
    assert again_usage["cached"]
    tokens = ("input_tokens", "output_tokens", "cost_usd")
    assert [again_usage[t] for t in tokens] == [0, 0, 0.0]
    # Claude was called for the first, the warm one and the stranger's: three calls
    assert stack.sim_stats()["keys"]["sk-repeater"]["requests"] == {"200": 2}
    assert stack.sim_stats()["keys"]["sk-stranger"]["requests"] == {"200": 1}
    metrics = stack.metrics_text().decode()
    assert 'claude_partner_response_cache_total{partner="repeater",result="hit"} 1.0' in metrics
