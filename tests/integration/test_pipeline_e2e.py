"""The whole pipeline, end to end: real broker, real simulator, a real worker process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from pipeline.client import build_request
from pipeline.dev.harness import CLI
from pipeline.kafka.clients import read_topics
from pipeline.partners import load_partners
from pipeline.security.signing import signed_headers
from tests import corpus
from tests.integration.stack import DEFAULT_KEY, MODEL, Key, Outcomes, Stack

pytestmark = pytest.mark.integration

BROKEN_KEY = "sk-test-always-overloaded"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("e2e"),
        sim_args=[
            *("--keys", f"{DEFAULT_KEY},{BROKEN_KEY}", "--latency-ms", "5"),
            *("--fail-rate", f"529=1.0@{BROKEN_KEY}"),
        ],
    )
    try:
        for pid in ("alpha", "beta", "gamma", "toggle", "replayer", "gone"):
            s.add_partner(pid)
        s.add_partner("capped", max_tokens_cap=100, allowed_models=(MODEL,))
        s.add_partner("rejected", api_key_ref=s.secret_file("bad.key", "sk-not-accepted"))
        s.add_partner("exhausted", api_key_ref=s.secret_file("broken.key", BROKEN_KEY))
        s.start_worker()
        yield s
    finally:
        s.close()


def _wait(stack: Stack, keys: list[Key], timeout: float = 60.0) -> Outcomes:
    partners = {k[0] for k in keys}
    got = stack.outcomes(partners, lambda o: o.complete(keys), timeout)
    missing = [k for k in keys if k not in got.responses]
    assert not missing, f"no response for {missing[:5]}"
    return got


def test_partners_are_served_concurrently_and_each_response_matches(stack: Stack) -> None:
    keys: list[Key] = []
    prompts: dict[Key, str] = {}
    for i in range(20):
        for pid in ("alpha", "beta", "gamma"):
            prompt = f"{pid} number {i} please"
            key = stack.send(pid, prompt)
            keys.append(key)
            prompts[key] = prompt
    got = _wait(stack, keys)
    for key in keys:
        (response,) = got.responses[key]
        (usage,) = got.usage[key]
        assert response["status"] == "ok", response
        assert response["request_id"] == key[1]
        assert response["partner_id"] == key[0]
        assert response["content"].startswith(f"Re: {prompts[key]}")
        assert response["usage"]["output_tokens"] == len(response["content"].split())
        assert usage["status"] == "ok"
        assert usage["cost_usd"] > 0
        assert usage["model"] == "claude-haiku-4-5-20251001"
        assert key not in got.dead


def _raw(
    stack: Stack, pid: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    client = stack.client(pid)
    client.send_raw(key, value, headers)
    client.flush()


def test_every_dead_letter_reason_with_the_original_payload(stack: Stack) -> None:
    codec = stack.codec
    alpha = stack.secrets["alpha"]
    sent: dict[Key, tuple[str, bytes]] = {}

    def craft(
        pid: str,
        reason: str,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        rid: str | None = None,
    ) -> None:
        rid = rid or str(uuid.uuid4())
        hdrs = headers if headers is not None else signed_headers(pid, stack.secrets[pid], value)
        _raw(stack, pid, rid.encode(), value, hdrs)
        sent[(pid, rid)] = (reason, value)

    def request(pid: str, rid: str, **kw: object) -> bytes:
        kw.setdefault("model", MODEL)
        return codec.encode("ClaudeRequest", build_request(pid, "crafted", request_id=rid, **kw))  # type: ignore[arg-type]

    rid = str(uuid.uuid4())
    craft("alpha", "schema_error", b"\x00\x01 not avro", rid=rid)
    bad_headers: list[Callable[[bytes], list[tuple[str, bytes]]]] = [
        lambda v: signed_headers("alpha", b"wrong secret", v),
        lambda v: signed_headers("alpha", alpha, v, time.time() - 3600),
        lambda v: [],
    ]
    for headers_for in bad_headers:
        rid = str(uuid.uuid4())
        value = request("alpha", rid)
        craft("alpha", "auth_failed", value, headers_for(value), rid=rid)
    rid = str(uuid.uuid4())
    craft("alpha", "auth_failed", request("beta", rid), rid=rid)  # value claims another partner
    rid = str(uuid.uuid4())
    craft("capped", "invalid_request", request("capped", rid, max_tokens=101), rid=rid)
    rid = str(uuid.uuid4())
    craft("capped", "invalid_request", request("capped", rid, model="claude-opus-4-8"), rid=rid)
    rid = str(uuid.uuid4())
    craft(
        "alpha",
        "deadline_expired",
        request("alpha", rid, deadline_ms=int(time.time() * 1000) - 1),
        rid=rid,
    )
    rid = str(uuid.uuid4())
    craft("rejected", "upstream_rejected", request("rejected", rid), rid=rid)
    rid = str(uuid.uuid4())
    craft("exhausted", "upstream_exhausted", request("exhausted", rid), rid=rid)

    got = _wait(stack, list(sent))
    for key, (reason, value) in sent.items():
        letters = got.dead.get(key, [])
        assert [d["reason"] for d in letters] == [reason], (key, letters)
        dead = letters[0]
        assert dead["payload"] != value  # sealed: the prompt is not readable in the DLQ
        assert stack.opened(dead).payload == value
        assert dead["source_topic"] == f"claude.requests.{key[0]}"
        assert dead["detail"]
        (response,) = got.responses[key]
        assert (response["status"], response["error_type"]) == ("error", reason)
        (usage,) = got.usage[key]
        assert (usage["status"], usage["reason"]) == ("error", reason)
    exhausted = next(
        d for k, (r, _) in sent.items() if r == "upstream_exhausted" for d in got.dead[k]
    )
    assert exhausted["attempts"] == 3
    assert exhausted["error_type"] == "overloaded_error"


def test_a_partner_added_while_running_is_served(stack: Stack) -> None:
    started = time.monotonic()
    stack.add_partner("latecomer")
    key = stack.send("latecomer", "hello from a new partner")
    got = _wait(stack, [key], timeout=60)
    assert got.responses[key][0]["status"] == "ok"
    assert time.monotonic() - started < 60


def test_a_partner_added_during_a_rebalance_is_served(stack: Stack) -> None:
    # A subscription change made while the group rebalances for the previous one
    # must not be lost (Faust's conductor dropped it: a light partner added just
    # after a flooding one waited forever).
    def subscribing(e: dict[str, Any]) -> bool:
        return e.get("msg") == "subscribing to new partner topics" and "opener" in e["partners"]

    stack.add_partner("opener")  # its subscription starts a rebalance...
    stack.wait_log(subscribing)
    stack.add_partner("midway")  # ...during which this one is added
    keys = [stack.send("opener", "first in"), stack.send("midway", "added mid-rebalance")]
    got = _wait(stack, keys, timeout=30)
    assert [got.responses[k][0]["status"] for k in keys] == ["ok", "ok"]


def test_a_removed_partner_gets_unknown_partner(stack: Stack) -> None:
    stack.remove_partner("gone")  # waits until the worker has applied the removal
    key = stack.send("gone", "anyone there?")
    got = _wait(stack, [key])
    assert got.reason(key) == "unknown_partner", (
        got.responses[key],
        [e for e in stack.worker_log() if e.get("partner") == "gone"],
    )


def test_disable_reaches_the_running_worker_within_5_s(stack: Stack) -> None:
    stack.update_partner("toggle", enabled=False, wait=False)
    disabled_at = time.monotonic()
    sent: list[tuple[float, Key]] = []
    while time.monotonic() - disabled_at < 6.0:
        sent.append((time.monotonic() - disabled_at, stack.send("toggle", "still here?")))
        time.sleep(0.25)  # pacing the probes (the test measures when the change lands)
    got = _wait(stack, [k for _, k in sent])
    refused_at = [t for t, k in sent if got.reason(k) == "partner_disabled"]
    assert refused_at, "no request was refused"
    assert min(refused_at) <= 5.0
    late = [k for t, k in sent if t > 5.0]
    assert all(got.reason(k) == "partner_disabled" for k in late)
    stack.update_partner("toggle", enabled=True)
    key = stack.send("toggle", "back again")
    assert _wait(stack, [key]).responses[key][0]["status"] == "ok"


def test_poison_records_do_not_stop_the_worker(stack: Stack) -> None:
    client = stack.client("beta")
    client.send_raw(None, b"\xff" * 64, headers=[])  # no key, no signature, no Avro
    client.send_raw(None, b"\x00", headers=signed_headers("beta", stack.secrets["beta"], b"\x00"))
    client.flush()
    keys = [stack.send("beta", f"after the poison {i}") for i in range(5)]
    got = _wait(stack, keys)
    assert all(got.responses[k][0]["status"] == "ok" for k in keys)
    orphans = [d for d in got.dead_without_id if d["partner_id"] == "beta"]
    assert {d["reason"] for d in orphans} == {"auth_failed", "schema_error"}
    assert all(stack.opened(d).payload in (b"\xff" * 64, b"\x00") for d in orphans)
    assert stack.workers["worker"][0].alive()


CONTRACT_METRICS = (
    "claude_partner_requests_total",
    "claude_partner_request_duration_seconds_bucket",
    "claude_partner_upstream_duration_seconds_bucket",
    "claude_partner_tokens_total",
    "claude_partner_cost_usd_total",
    "claude_partner_errors_total",
    "claude_partner_retries_total",
    "claude_partner_dlq_total",
    "claude_partner_queue_depth",
    "claude_upstream_ratelimit_remaining",
)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_follow_the_contract(stack: Stack) -> None:
    keys = [stack.send("gamma", f"metrics {i}") for i in range(3)]
    # this test's own failures, whatever ran before it
    keys += [stack.send("capped", f"over the cap {i}", max_tokens=101) for i in range(2)]
    keys += [stack.send("rejected", "metrics rejected"), stack.send("exhausted", "metrics 529")]
    _wait(stack, keys)
    text = stack.metrics_text().decode()
    for name in CONTRACT_METRICS:
        assert name in text, name
    assert _metric(text, "claude_partner_requests_total", partner="gamma", status="ok") >= 3
    assert _metric(text, "claude_partner_tokens_total", partner="gamma", kind="output") > 0
    assert _metric(text, "claude_partner_cost_usd_total", partner="gamma") > 0
    assert (
        _metric(text, "claude_partner_dlq_total", partner="capped", reason="invalid_request") >= 2
    )
    assert _metric(text, "claude_partner_errors_total", partner="exhausted") >= 3
    assert _metric(text, "claude_partner_errors_total", partner="rejected") >= 1
    assert _metric(text, "claude_partner_retries_total", partner="exhausted") >= 2
    assert _metric(text, "claude_upstream_ratelimit_remaining", resource="requests") > 0


def test_logs_are_json_with_fields_and_leak_nothing(stack: Stack) -> None:
    marker = "a distinctive prompt that must never be logged"
    key = stack.send("alpha", marker)
    _wait(stack, [key])
    # the line follows the outcome's publication: a response can be read first
    stack.wait_log(lambda e: e.get("msg") == "served" and e.get("request_id") == key[1])
    proc = stack.workers["worker"][0]
    raw = proc.log_text()
    lines = [line for line in raw.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), [x for x in lines if not x.startswith("{")][
        :3
    ]
    served = [json.loads(line) for line in lines if '"msg": "served"' in line]
    mine = [e for e in served if e["request_id"] == key[1]]
    assert len(mine) == 1
    for field in ("partner", "request_id", "topic", "partition", "offset", "attempt", "latency_ms"):
        assert field in mine[0], field
    for secret in [*stack.secrets.values(), DEFAULT_KEY.encode(), BROKEN_KEY.encode()]:
        assert secret.decode() not in raw
    assert marker not in raw
    assert "sk-not-accepted" not in raw


def _cli(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **stack.env},
    )


def _records(stack: Stack, topic: str) -> int:
    return sum(1 for _ in read_topics(stack.settings, [topic]))


def test_dlq_replay_serves_what_failed_once_the_cause_is_fixed(stack: Stack) -> None:
    stack.update_partner("replayer", enabled=False)
    keys = [stack.send("replayer", f"replay me {i}") for i in range(2)]
    got = _wait(stack, keys)
    assert all(got.reason(k) == "partner_disabled" for k in keys)

    listed = _cli(stack, "dlq", "list", "--partner", "replayer", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["request_id"] for r in rows} == {k[1] for k in keys}

    refused = _cli(stack, "dlq", "replay", "--partner", "replayer", "--max-replays", "0")
    assert refused.returncode == 0, refused.stderr
    assert "replayed 0," in refused.stdout
    assert "refused 2," in refused.stdout

    stack.update_partner("replayer", enabled=True)
    before = _records(stack, "claude.requests.replayer")
    dry = _cli(
        stack, "dlq", "replay", "--partner", "replayer", "--reason", "partner_disabled", "--dry-run"
    )
    assert "dry run: 2 to replay" in dry.stdout, dry.stdout + dry.stderr
    assert _records(stack, "claude.requests.replayer") == before  # a dry run sends nothing

    done = _cli(stack, "dlq", "replay", "--partner", "replayer", "--reason", "partner_disabled")
    assert "replayed 2, skipped 0, failed 0, refused 0" in done.stdout, done.stdout + done.stderr
    got = stack.outcomes(
        ["replayer"],
        lambda o: all(any(r["status"] == "ok" for r in o.responses[k]) for k in keys),
        timeout=30,
    )
    for key in keys:
        statuses = [r["status"] for r in got.responses[key]]
        assert statuses == ["error", "ok"], statuses
    again = _cli(stack, "dlq", "replay", "--partner", "replayer")
    assert "replayed 0" in again.stdout, again.stdout  # already served: nothing to replay


def test_cli_send_wait_responses_partners_topics_usage(stack: Stack) -> None:
    request_id = f"cli-{uuid.uuid4()}"
    out = _cli(
        stack, "send", "--partner", "alpha", "--prompt", "cli says hello", "--wait",
        "--request-id", request_id,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    message = anthropic.types.Message.model_validate(json.loads(out.stdout))
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Re: cli says hello")

    params = stack.tmp / "params.json"
    params.write_text(json.dumps(corpus.corpus()["tools_any"]))
    out = _cli(stack, "send", "--partner", "alpha", "--request-file", str(params), "--wait")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stop_reason"] == "tool_use"
    params.write_text(json.dumps({**corpus.corpus()["tools_any"], "stream": True}))
    bad = _cli(stack, "send", "--partner", "alpha", "--request-file", str(params))
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        "stream: streaming does not travel over Kafka (the gateway streams)"
    )

    tail = _cli(stack, "responses", "--partner", "alpha", "--from-beginning", "--no-follow")
    assert any(json.loads(line)["request_id"] == request_id for line in tail.stdout.splitlines())

    listed = _cli(stack, "partners", "list", "--source", "topic", "--format", "json")
    partners = {p["partner_id"]: p for p in json.loads(listed.stdout)}
    assert partners["capped"]["max_tokens_cap"] == 100
    # workers see what the registry file says (removals included)
    assert set(partners) == set(load_partners(stack.settings.partners_file))

    table = _cli(stack, "partners", "list")
    assert table.returncode == 0
    assert "alpha" in table.stdout

    topics = _cli(stack, "topics", "create")
    assert topics.stdout.strip() == "all topics already exist"
    acls = _cli(stack, "topics", "create", "--acls", "--partner-principal", "User:p-{partner}")
    assert "ALLOW User:p-alpha WRITE TOPIC:LITERAL:claude.requests.alpha from *" in acls.stdout
    assert "ALLOW User:claude-pipeline READ TOPIC:PREFIXED:claude.requests. from *" in acls.stdout
    bad_apply = _cli(stack, "topics", "create", "--apply")
    assert bad_apply.returncode == 2

    report = json.loads(_cli(stack, "usage", "report", "--format", "json").stdout)
    assert report["alpha"]["ok"] >= 1

    def caught_up(o: Outcomes) -> bool:
        return all(
            sum(len(r) for (p, _), r in o.usage.items() if p == pid) >= row["requests"]
            for pid, row in report.items()
        )

    usage = stack.outcomes(list(report), caught_up, timeout=20).usage
    for pid, row in report.items():
        mine = [u for (p, _), records in usage.items() if p == pid for u in records]
        assert row["requests"] == len(mine)
        assert row["output_tokens"] == sum(u["output_tokens"] for u in mine)
    html = _cli(stack, "usage", "report", "--format", "html").stdout
    assert "<table>" in html
    assert "alpha" in html

    bad = _cli(stack, "send", "--partner", "nobody", "--prompt", "x")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    bad_since = _cli(stack, "dlq", "list", "--since", "last tuesday")
    assert bad_since.returncode == 2
    assert "--since" in bad_since.stderr


def test_the_readme_partner_example_runs_verbatim(stack: Stack) -> None:
    import os

    root = Path(__file__).resolve().parents[2]
    example = (root / "examples" / "partner.py").read_text()
    readme = (root / "README.md").read_text()
    assert example.split('"""', 2)[2].strip() in readme, "README and examples/partner.py differ"
    out = subprocess.run(
        [sys.executable, "examples/partner.py"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=root,
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": stack.env["KAFKA_BOOTSTRAP_SERVERS"],
            "PARTNER": "alpha",
            "ACME_SECRET": stack.secrets["alpha"].decode(),
        },
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok Re: Hello, Claude"), out.stdout + out.stderr
