"""Partner security and spend control, against a real broker, simulator and worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.client import build_request
from pipeline.dev.harness import CLI
from pipeline.kafka.clients import SyncProducer, read_topics
from pipeline.limits import tokens
from pipeline.limits.pricing import PriceTable
from pipeline.partners import (
    DLQ_TOPIC,
    PARTNERS_TOPIC,
    USAGE_TOPIC,
    Partner,
    requests_topic,
    responses_topic,
)
from pipeline.security.registryauth import registry_headers
from pipeline.security.signing import signed_headers
from tests.integration.stack import DEFAULT_KEY, MODEL, Key, Outcomes, Stack

pytestmark = pytest.mark.integration

ALT_KEYS = ("sk-test-alternate-one", "sk-test-alternate-two")
MAX_TOKENS = 64


def _worst_usd(prompt: str) -> float:
    messages = [{"role": "user", "content": prompt}]
    return PriceTable().worst_case(MODEL, tokens.upper_bound_request(messages), MAX_TOKENS)


BUDGET_PROMPT = "budgeted 000"
BUDGET_USD = 50 * _worst_usd(BUDGET_PROMPT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("security"),
        sim_args=[
            *("--keys", ",".join((DEFAULT_KEY, *ALT_KEYS))),
            *("--latency-ms", "5", "--output-tokens", "20"),
        ],
    )
    try:
        for pid in ("sec", "other", "rot", "healthy", "tokenized", "huge", "steady"):
            s.add_partner(pid, daily_token_budget=2_000 if pid == "tokenized" else None)
        s.add_partner("filekey", api_key_ref=s.secret_file("filekey.key", ALT_KEYS[0]))
        s.add_partner("revoked", api_key_ref=s.secret_file("revoked.key", "sk-test-revoked"))
        s.add_partner("budget", monthly_budget_usd=BUDGET_USD)
        s.add_partner("unpriced-usd", monthly_budget_usd=BUDGET_USD)
        s.add_partner("unpriced")
        s.start_worker()
        yield s
    finally:
        s.close()


def _wait(stack: Stack, keys: list[Key], timeout: float = 60) -> Outcomes:
    got = stack.outcomes({k[0] for k in keys}, lambda o: o.complete(keys), timeout)
    missing = [k for k in keys if k not in got.responses]
    if missing:
        trails = {
            k[1]: [
                (name, e["ts"][11:23], e.get("msg"), e.get("partition"), e.get("offset"))
                for name in stack.workers
                for e in stack.worker_log(name)
                if e.get("request_id") == k[1]
            ]
            for k in missing
        }
        lost = {k[1] for k in missing}
        where = [
            (m.partition(), m.offset())
            for m in read_topics(stack.settings, [requests_topic(p) for p in {k[0] for k in keys}])
            if (m.key() or b"").decode() in lost
        ]
        pytest.fail(f"{len(missing)} missing outcomes at (partition, offset) {where}: {trails}")
    return got


def _signed(
    stack: Stack,
    pid: str,
    prompt: str,
    *,
    secret: bytes | None = None,
    ts: float | None = None,
    partner_in_value: str | None = None,
) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    rid = str(uuid.uuid4())
    value = stack.codec.encode(
        "ClaudeRequest",
        build_request(
            partner_in_value or pid, prompt, model=MODEL, max_tokens=MAX_TOKENS, request_id=rid
        ),
    )
    headers = signed_headers(pid, secret or stack.secrets[pid], value, ts)
    return rid, value, headers


def _produce(
    stack: Stack, pid: str, rid: str, value: bytes, headers: list[tuple[str, bytes]]
) -> Key:
    client = stack.client(pid)
    client.send_raw(rid.encode(), value, headers)
    client.flush()
    return (pid, rid)


def test_forged_stale_replayed_and_cross_partner_records_are_refused(stack: Stack) -> None:
    def honest() -> Key:
        return _produce(stack, "sec", *_signed(stack, "sec", "honest"))

    attacks: list[tuple[Key, str]] = []
    honest_keys: list[Key] = []
    # forged: signed with a secret that is not the partner's
    attacks.append(
        (_produce(stack, "sec", *_signed(stack, "sec", "x", secret=b"guess")), "signature mismatch")
    )
    honest_keys.append(honest())
    # stale: a genuine signature, twenty minutes old
    attacks.append(
        (
            _produce(stack, "sec", *_signed(stack, "sec", "x", ts=time.time() - 1200)),
            "stale signature",
        )
    )
    honest_keys.append(honest())
    # replayed: a record already served, produced again byte for byte
    rid, value, headers = _signed(stack, "sec", "pay me twice")
    first = _produce(stack, "sec", rid, value, headers)
    _wait(stack, [first])
    _produce(stack, "sec", rid, value, headers)
    honest_keys.append(honest())
    # cross-partner: "other" signs its own record but sends it to sec's topic
    attacks.append(
        (_produce(stack, "sec", *_signed(stack, "other", "x")), "does not match the topic")
    )
    honest_keys.append(honest())
    got = _wait(stack, [k for k, _ in attacks] + honest_keys + [first])
    got = stack.outcomes(["sec"], lambda o: first in o.dead, 20)  # the copy's audit entry
    for key, fragment in attacks:
        (dead,) = got.dead[key]
        assert dead["reason"] == "auth_failed"
        assert fragment in dead["detail"], dead["detail"]
    copies = got.dead.get(first, [])
    assert [d["reason"] for d in copies] == ["duplicate"]
    assert "a later copy of request_id" in copies[0]["detail"]
    assert [r["status"] for r in got.responses[first]] == ["ok"]  # one request_id, one response
    assert len(got.usage[first]) == 1
    for key in honest_keys:
        assert got.responses[key][0]["status"] == "ok"


def test_rotation_accepts_both_secrets_during_the_grace_window_only(stack: Stack) -> None:
    old = stack.secrets["rot"]
    new_ref = stack.secret_file("rot.new", "the-new-rot-secret")

    def updates() -> list[dict[str, object]]:
        return [e for e in stack.worker_log() if e.get("msg") == "partner updated"]

    applied = len(updates())
    out = subprocess.run(
        [*CLI, "partners", "rotate-secret", "rot", "--new-ref", new_ref, "--grace", "5s"],
        capture_output=True, text=True, env={**os.environ, **stack.env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rotated_at = time.monotonic()
    stack.wait_log(lambda e: e.get("msg") == "partner updated", count=applied + 1)
    during = [
        _produce(stack, "rot", *_signed(stack, "rot", "old during", secret=old)),
        _produce(stack, "rot", *_signed(stack, "rot", "new during", secret=b"the-new-rot-secret")),
    ]
    got = _wait(stack, during)
    assert [got.responses[k][0]["status"] for k in during] == ["ok", "ok"]
    time.sleep(max(0.0, 5.5 - (time.monotonic() - rotated_at)))  # the grace window itself
    after = [
        _produce(stack, "rot", *_signed(stack, "rot", "old after", secret=old)),
        _produce(stack, "rot", *_signed(stack, "rot", "new after", secret=b"the-new-rot-secret")),
    ]
    got = _wait(stack, after)
    assert got.reason(after[0]) == "auth_failed"
    assert got.responses[after[1]][0]["status"] == "ok"


def test_changed_secret_and_key_files_take_effect_without_a_restart(stack: Stack) -> None:
    first = stack.send("filekey", "with the first key")
    _wait(stack, [first])
    stack.secret_file("filekey.key", ALT_KEYS[1])  # the partner's Anthropic key changes
    signing = stack.secret_file("filekey.signing", "a-fresh-signing-secret")  # and its secret
    assert signing
    # Files are re-checked every second: the first request signed with the new
    # secret may still meet the old one; one signed after that second may not.
    deadline = time.monotonic() + 5
    while True:
        rid, value, headers = _signed(
            stack, "filekey", "after the change", secret=b"a-fresh-signing-secret"
        )
        second = _produce(stack, "filekey", rid, value, headers)
        got = _wait(stack, [second])
        if got.responses[second][0]["status"] == "ok" or time.monotonic() > deadline:
            break
    assert got.responses[second][0]["status"] == "ok"
    per_key = stack.sim_stats()["keys"]
    assert per_key[ALT_KEYS[0]]["requests"]["200"] >= 1
    assert per_key[ALT_KEYS[1]]["requests"]["200"] == 1


def test_a_revoked_partner_key_does_not_affect_other_partners(stack: Stack) -> None:
    # The first call learns the key is refused (a fresh worker may have a second
    # request in flight by then: sent one at a time, the count is exact). Other
    # tests may have used the key before: count from here.
    def calls() -> int:
        key = stack.sim_stats()["keys"].get("sk-test-revoked", {})
        return int(sum(key.get("requests", {}).values()))

    before = calls()
    first = stack.send("revoked", "revoked 0")
    _wait(stack, [first])
    revoked = [first, *(stack.send("revoked", f"revoked {i}") for i in range(1, 3))]
    healthy = [stack.send("healthy", f"healthy {i}") for i in range(3)]
    got = _wait(stack, revoked + healthy)
    assert all(got.reason(k) == "upstream_rejected" for k in revoked)
    assert all(got.responses[k][0]["status"] == "ok" for k in healthy)
    metrics = stack.metrics_text().decode()
    assert re.search(r'claude_partner_key_rejected_total\{partner="revoked"\} [1-9]', metrics)
    # only the first request reached Claude: the others failed fast on the refused key
    assert calls() - before == 1
    assert set(stack.sim_stats()["keys"]["sk-test-revoked"]["requests"]) == {"401"}


def test_budgets_are_never_overrun_and_survive_a_restart(stack: Stack) -> None:
    client = stack.client("budget")
    keys: list[Key] = []
    for i in range(200):
        request = build_request("budget", f"budgeted {i:03d}", model=MODEL, max_tokens=MAX_TOKENS)
        client.send(request)
        keys.append(("budget", request["request_id"]))
    client.flush()
    got = _wait(stack, keys, timeout=90)
    spent = sum(got.usage[k][0]["cost_usd"] for k in keys)
    served = [k for k in keys if got.responses[k][0]["status"] == "ok"]
    refused = [k for k in keys if got.reason(k) == "quota_exceeded"]
    assert spent <= BUDGET_USD
    assert len(served) >= 50  # reservations settle to the real, lower cost
    assert len(served) + len(refused) == 200
    assert "monthly budget" in got.dead[refused[0]][0]["detail"]

    tokenized = [stack.send("tokenized", f"t {i}") for i in range(100)]
    got = _wait(stack, tokenized)
    used = sum(u["input_tokens"] + u["output_tokens"] for k in tokenized for u in got.usage[k])
    assert used <= 2_000
    assert any(got.reason(k) == "quota_exceeded" for k in tokenized)

    # a new worker process recovers what was spent (whichever ran before)
    for name in list(stack.workers):
        stack.workers.pop(name)[0].stop()
    stack.start_worker("after-restart")
    later = stack.send("budget", BUDGET_PROMPT)
    got = _wait(stack, [later])
    assert got.reason(later) == "quota_exceeded"


def test_a_redelivery_after_a_crash_is_neither_a_replay_nor_a_second_call(
    stack: Stack,
) -> None:
    # a worker that will not commit offsets before we kill it
    for name in list(stack.workers):
        stack.workers.pop(name)[0].stop()
    crashing = stack.start_worker("crashing", env={"PIPELINE_COMMIT_INTERVAL_S": "60"})
    before = stack.sim_stats()["totals"]["requests"].get("200", 0)
    keys = [stack.send("healthy", f"crash {i}") for i in range(20)]
    _wait(stack, keys)
    # "served" is logged once an outcome's done marker is durable: kill after that.
    # The offsets are still uncommitted, so every record is redelivered.
    ids = {k[1] for k in keys}
    stack.wait_log(
        lambda e: e.get("msg") == "served" and e.get("request_id") in ids,
        name="crashing",
        count=len(keys),
    )
    crashing.signal(signal.SIGKILL)
    crashing.popen.wait(10)
    survivor = stack.start_worker("survivor")
    stack.wait_log(  # each redelivered record met by the survivor
        lambda e: (
            e.get("request_id") in ids
            and e.get("msg") in ("redelivered record already served", "served", "dead-lettered")
        ),
        name="survivor",
        count=len(keys),
    )
    got = stack.outcomes(["healthy"], lambda o: False, 1)
    for key in keys:
        trail = [
            (name, e["ts"][11:23], e.get("msg"), e.get("partition"), e.get("offset"))
            for name in ("crashing", "survivor")
            for e in stack.worker_log(name)
            if e.get("request_id") == key[1]
        ]
        assert len(got.responses[key]) == 1, trail
        assert key not in got.dead
    assert stack.sim_stats()["totals"]["requests"]["200"] - before == 20
    redelivered = [
        e
        for e in stack.worker_log("survivor")
        if e.get("msg") == "redelivered record already served"
    ]
    assert len(redelivered) >= 1
    assert survivor.alive()


def test_nothing_secret_leaks_anywhere(stack: Stack) -> None:
    marker = "a prompt no dead letter may show in clear"
    keys = [
        stack.send("sec", marker),
        _produce(stack, "sec", *_signed(stack, "sec", marker, secret=b"forged-secret")),
        stack.send("revoked", marker),
    ]
    _wait(stack, keys)
    secrets = [s.decode() for s in stack.secrets.values()]
    secrets += [
        DEFAULT_KEY,
        *ALT_KEYS,
        "sk-test-revoked",
        "the-new-rot-secret",
        "a-fresh-signing-secret",
    ]
    haystacks: dict[str, bytes] = {}
    for name, (proc, _) in stack.workers.items():
        haystacks[f"log:{name}"] = proc.log_text().encode()
        if proc.alive():
            haystacks[f"metrics:{name}"] = stack.metrics_text(name)
    pids = list(stack.secrets)
    for msg in read_topics(
        stack.settings, [DLQ_TOPIC, USAGE_TOPIC] + [responses_topic(p) for p in pids]
    ):
        haystacks[f"{msg.topic()}@{msg.offset()}"] = (msg.value() or b"") + repr(
            msg.headers()
        ).encode()
    dead = [
        stack.codec.decode("DeadLetter", v) for k, v in haystacks.items() if k.startswith(DLQ_TOPIC)
    ]
    decoded = json.dumps(dead, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
    haystacks["dead letters decoded"] = decoded.encode()
    for secret in secrets:
        hits = [name for name, data in haystacks.items() if secret.encode() in data]
        assert not hits, f"{secret[:4]}... found in {hits[:3]}"
    assert all("x-signature" not in d["headers"] for d in dead)
    assert not any(marker.encode() in d["payload"] for d in dead)
    assert not any(
        marker.encode() in data for name, data in haystacks.items() if name.startswith("log:")
    )


def test_a_registry_record_without_the_admin_signature_changes_nothing(stack: Stack) -> None:
    # Before: any record on claude.partners that decoded was applied: a writer
    # pointed a partner's signing secret at a file it could read, then forged
    # that partner's requests.
    stack.add_partner("victim")
    readme = Path(__file__).resolve().parents[2] / "README.md"
    hijacked = Partner("victim", f"file:{readme}", updated_at_ms=int(time.time() * 1000) + 60_000)
    value = stack.codec.encode("PartnerConfig", hijacked.to_record())
    producer = SyncProducer(stack.settings)
    producer.produce(PARTNERS_TOPIC, value, key=b"victim")  # unsigned
    guessed = registry_headers(b"a guessed registry key", b"victim", value, 1)
    producer.produce(PARTNERS_TOPIC, value, key=b"victim", headers=guessed)
    producer.flush()
    live = next(name for name, (proc, _) in stack.workers.items() if proc.alive())
    stack.wait_log(
        lambda e: (
            e.get("msg") == "ignoring a partner record"
            and "registry signature mismatch" in str(e.get("error"))
        ),
        name=live,
    )
    forged = _produce(
        stack, "victim", *_signed(stack, "victim", "forged", secret=readme.read_bytes().strip())
    )
    honest = stack.send("victim", "still the real partner")
    got = _wait(stack, [forged, honest])
    assert got.reason(forged) == "auth_failed"
    assert got.responses[honest][0]["status"] == "ok"
    # An admin cannot point a secret outside the allowed places either.
    out = subprocess.run(
        [*CLI, "partners", "set", "victim", "--signing-secret-ref", "file:/dev/zero"],
        capture_output=True, text=True, env={**os.environ, **stack.env},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "outside the allowed secret locations" in out.stderr


# -- issue 23, finding 2: a record of ten million messages ------------------------


def _ten_million_messages(stack: Stack, pid: str) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """A signed request of 10,000,000 empty messages (3 bytes each in Avro: 30 MB),
    spliced into the bytes of a one-message request (encoding it would take the
    test itself gigabytes)."""
    rid = str(uuid.uuid4())
    one = build_request(pid, "QQQQQQQQ", model=MODEL, max_tokens=MAX_TOKENS, request_id=rid)
    value = stack.codec.encode("ClaudeRequest", one)
    message = b"\x02\x00\x00\x10QQQQQQQQ\x00"  # 1 item: role user, a string of 8, end
    assert value.count(message) == 1
    n, count = 10_000_000, b""
    zigzag = n << 1
    while zigzag >= 0x80:
        count += bytes([zigzag & 0x7F | 0x80])
        zigzag >>= 7
    count += bytes([zigzag])
    value = value.replace(message, count + b"\x00\x00\x00" * n + b"\x00")
    return rid, value, signed_headers(pid, stack.secrets[pid], value)


def _peak_rss_mb(pid: int) -> dict[int, float]:
    """Peak resident memory (VmHWM, MB) of a process and of each of its children
    (the examiner)."""
    peaks = {}
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[p] = int(line.split()[1]) / 1024
    return peaks


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def test_ten_million_messages_are_refused_at_a_block_header_costing_no_one(stack: Stack) -> None:
    # Before: the examiner took 34 s and 4 GB to decode it, the worker 2.2 GB and
    # 3 s under the GIL to unpickle the refusal's copy of it: every partner stalled.
    proc, _ = stack.workers[stack.live_worker()]

    def steady_with(rid: str, value: bytes, headers: list[tuple[str, bytes]]) -> list[float]:
        """Steady traffic's latencies while `value` goes through the worker."""
        key = _produce(stack, "huge", rid, value, headers)
        keys = [stack.send("steady", f"steady {i}", max_tokens=MAX_TOKENS) for i in range(40)]
        got = _wait(stack, keys)
        stack.outcomes(["huge"], lambda o: key in o.dead, 60)
        return [float(got.responses[k][0]["latency_ms"]) for k in keys]

    rid, value, headers = _ten_million_messages(stack, "huge")
    assert len(value) > 30_000_000
    # The same 30 MB refused before it is read (a forged signature): what moving
    # it through Kafka costs everyone, which the comparison takes out.
    forged = _ten_million_messages(stack, "huge")
    transport = steady_with(forged[0], forged[1], signed_headers("huge", b"guess", forged[1]))
    before = _peak_rss_mb(proc.pid)
    during = steady_with(rid, value, headers)
    after = _peak_rss_mb(proc.pid)
    got = stack.outcomes(["huge"], lambda o: ("huge", rid) in o.dead, 60)
    (dead,) = got.dead[("huge", rid)]
    assert dead["reason"] == "invalid_request"
    assert "messages: more than 100,000 items (PIPELINE_MAX_MESSAGES)" in dead["detail"]
    assert dead["payload"] == b""  # no 30 MB copy: the record stays at its offset
    assert dead["payload_bytes"] == len(value)
    (response,) = got.responses[("huge", rid)]
    assert response["error_type"] == "invalid_request"
    assert after[proc.pid] - before[proc.pid] < 100, (before, after)
    # 40 samples per phase, taken one after the other while other test modules
    # load the same two cores: their p99 (2.0 once) and even p90 (3.4 once)
    # measured that load, not the record. The median is what the record costs
    # everyone; the bound on the slowest catches the stall this guards against
    # (whole seconds for every partner, before the fix).
    ratio = _pct(during, 0.5) / max(_pct(transport, 0.5), 1.0)
    print(
        f"steady p50 with a forged 30 MB record {_pct(transport, 0.5):.0f} ms, with ten "
        f"million messages {_pct(during, 0.5):.0f} ms: ratio {ratio:.2f}, slowest "
        f"{max(during):.0f} ms; worker peak RSS "
        f"{before[proc.pid]:.0f} -> {after[proc.pid]:.0f} MB"
    )
    # On Kafka a steady request's latency swings between 100 and 550 ms from one
    # phase to the next with the shared cores' load (its fetches wait up to the
    # production profile's 500 ms): the medians are compared beyond that swing.
    swing = 0.0 if stack.engine == "tansu" else 500.0
    if _pct(during, 0.5) >= 1.5 * _pct(transport, 0.5) + swing:
        # A neighbour's burst in one phase (three test processes share two cores:
        # 398 against 128 ms once in CI) is not the record's: both phases once more.
        # A record that stalls everyone fails both times.
        forged = _ten_million_messages(stack, "huge")
        transport = steady_with(forged[0], forged[1], signed_headers("huge", b"guess", forged[1]))
        during = steady_with(*_ten_million_messages(stack, "huge"))
    assert _pct(during, 0.5) < 1.5 * _pct(transport, 0.5) + swing, (transport, during)
    assert max(during) < max(transport) + 1_500, (transport, during)


def test_a_model_with_no_price_cannot_spend_a_usd_budget(stack: Stack) -> None:
    # Its usage would be recorded at $0, so the budget would never stop it.
    refused = stack.send("unpriced-usd", "on the house?", model="claude-imaginary-9")
    other = stack.send("unpriced", "on the house?", model="claude-imaginary-9")
    got = stack.outcomes(["unpriced-usd", "unpriced"], lambda o: o.complete([refused, other]), 60)
    (dead,) = got.dead[refused]
    assert dead["reason"] == "invalid_request"
    assert dead["detail"] == (
        "no price for model claude-imaginary-9; add it with PIPELINE_PRICES_FILE"
    )
    (response,) = got.responses[refused]
    assert response["error_type"] == "invalid_request"
    assert "no price for model claude-imaginary-9" in response["error_message"]
    # without a USD budget it goes on to Claude (which knows no such model), and
    # the worker says once that its usage would be recorded at $0
    assert got.reason(other) != "invalid_request"
    (line,) = stack.wait_log(lambda r: str(r.get("msg", "")).startswith("no price for model"))
    assert (line["model"], line["partner"]) == ("claude-imaginary-9", "unpriced")
