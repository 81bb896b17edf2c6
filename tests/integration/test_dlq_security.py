"""`dlq replay` under attack: nothing forged, unsealed or refused is ever run as a
partner, rotation never strands a dead letter, and one bad entry stops nothing."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from pipeline.client import build_request
from pipeline.dev.harness import CLI
from pipeline.kafka.clients import SyncProducer, read_topics
from pipeline.partners import DLQ_TOPIC, requests_topic
from pipeline.security.signing import signed_headers
from tests.integration.stack import Key, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("dlq-security"), sim_args=["--latency-ms", "5"])
    try:
        s.start_worker()
        yield s
    finally:
        s.close()


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **stack.env},
    )


def _requests(stack: Stack, pid: str) -> int:
    return sum(1 for _ in read_topics(stack.settings, [requests_topic(pid)]))


def _forged(stack: Stack, pid: str) -> Key:
    rid = str(uuid.uuid4())
    value = stack.codec.encode("ClaudeRequest", build_request(pid, "run me as you", request_id=rid))
    client = stack.client(pid)
    client.send_raw(rid.encode(), value, signed_headers(pid, b"a guessed secret", value))
    client.flush()
    return (pid, rid)


def test_a_forged_record_is_never_replayed_as_the_partner(stack: Stack) -> None:
    # Before: its payload was sealed like any other, `dlq replay` replayed every
    # reason and re-signed it with the partner's secret: an unsigned record plus
    # a routine replay ran a request as the partner, billed to the partner.
    stack.add_partner("forged")
    key = _forged(stack, "forged")
    got = stack.outcomes(["forged"], lambda o: key in o.dead)
    assert got.dead[key][0]["reason"] == "auth_failed"
    assert not stack.opened(got.dead[key][0]).verified  # sealed as never verified
    before = _requests(stack, "forged")
    out = _cli(stack, "dlq", "replay", "--partner", "forged", "--reason", "auth_failed")
    assert out.returncode == 0, out.stderr
    assert "auth_failed is never replayed" in out.stdout
    assert "replayed 0," in out.stdout
    assert _requests(stack, "forged") == before


def test_an_injected_plaintext_dead_letter_is_not_replayed_and_stops_nothing(
    stack: Stack,
) -> None:
    # Before: an unsealed payload passed through unchanged, so anyone able to
    # write to claude.dlq could have plaintext signed and run as a partner; and
    # one bad entry aborted the whole replay, with nothing flushed or counted.
    stack.add_partner("injected", enabled=False)
    genuine = stack.send("injected", "a genuine request, refused while disabled")
    got = stack.outcomes(["injected"], lambda o: genuine in o.dead)
    assert got.reason(genuine) == "partner_disabled"
    rid = str(uuid.uuid4())
    plain = stack.codec.encode(
        "ClaudeRequest", build_request("injected", "injected prompt", request_id=rid)
    )
    forged_letter = {
        **got.dead[genuine][0],
        "request_id": rid,
        "reason": "upstream_exhausted",
        "payload": plain,  # not sealed
        "source_offset": 999_999,
        "source_key": rid.encode(),
        "failed_at_ms": int(time.time() * 1000),
    }
    producer = SyncProducer(stack.settings)
    producer.produce(DLQ_TOPIC, stack.codec.encode("DeadLetter", forged_letter), b"injected")
    producer.flush()
    stack.update_partner("injected", enabled=True)
    out = _cli(stack, "dlq", "replay", "--partner", "injected")
    assert out.returncode == 1, out.stdout + out.stderr  # a failed entry: exit 1
    assert f"failed   injected/{rid}: the payload is not sealed" in out.stdout
    assert "replayed 1, skipped 0, failed 1" in out.stdout
    got = stack.outcomes(["injected"], lambda o: len(o.responses.get(genuine, [])) == 2)
    assert [r["status"] for r in got.responses[genuine]] == ["error", "ok"]
    assert ("injected", rid) not in got.responses  # never ran


def test_dead_letters_stay_replayable_across_secret_rotations(stack: Stack) -> None:
    # Before: payloads were sealed with the partner's signing secret, which
    # rotate-secret overwrites: after two rotations a dead letter could not be opened.
    stack.add_partner("rotating", enabled=False)
    key = stack.send("rotating", "sealed before two rotations")
    stack.outcomes(["rotating"], lambda o: key in o.dead)
    for n in (1, 2):
        ref = stack.secret_file(f"rotating.signing.{n}", f"rotated-secret-number-{n}")
        stack.update_partner("rotating", signing_secret_ref=ref)
    stack.update_partner("rotating", enabled=True)
    out = _cli(stack, "dlq", "replay", "--partner", "rotating")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "replayed 1," in out.stdout
    got = stack.outcomes(["rotating"], lambda o: len(o.responses.get(key, [])) == 2)
    assert [r["status"] for r in got.responses[key]] == ["error", "ok"]


def test_a_replay_refused_again_at_intake_keeps_its_replay_count(stack: Stack) -> None:
    # Before: a rejection at intake always carried replay_count 0, so the replay
    # limit never stopped a record that kept failing there.
    stack.add_partner("stubborn", enabled=False)
    key = stack.send("stubborn", "refused every time")
    stack.outcomes(["stubborn"], lambda o: key in o.dead)
    out = _cli(stack, "dlq", "replay", "--partner", "stubborn", "--max-replays", "1")
    assert "replayed 1," in out.stdout, out.stdout + out.stderr
    got = stack.outcomes(["stubborn"], lambda o: len(o.dead.get(key, [])) == 2)
    assert [d["replay_count"] for d in got.dead[key]] == [0, 1]
    again = _cli(stack, "dlq", "replay", "--partner", "stubborn", "--max-replays", "1")
    assert "already replayed 1 times (max 1)" in again.stdout, again.stdout
    assert "replayed 0," in again.stdout
