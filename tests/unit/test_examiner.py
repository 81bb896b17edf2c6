"""Heavy records are decoded and checked in the examiner process: the same
outcomes as inline, the body encoded there, and a helper that dies costs one
record, never the worker (nor does a worker killed with SIGKILL leave it behind)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from pipeline.client import build_request
from pipeline.errors import SchemaError
from pipeline.lifecycle.examiner import Examiner
from pipeline.lifecycle.intake import Examined, examine_value
from pipeline.lifecycle.pausing import MAX_EXAMINING
from pipeline.messages import json_body
from pipeline.partners import Partner
from pipeline.records import HEAVY_BYTES, SourceRecord
from pipeline.security.signing import signed_headers
from tests.unit.test_dispatch import CODEC, FakeClaude, Harness

BIG = "lorem ipsum " * (HEAVY_BYTES // 12 + 1000)


def _crash(*args: Any) -> Any:
    os._exit(3)  # what a decoder crash on hostile bytes looks like from outside


def _heavy(h: Harness, rid: str, **fields: Any) -> SourceRecord:
    request = build_request("acme", BIG, request_id=rid, max_tokens=50)
    request.update(fields)
    value = CODEC.encode("ClaudeRequest", request)
    assert len(value) > HEAVY_BYTES
    h.offset += 1
    headers = signed_headers("acme", b"secret-acme", value)
    return SourceRecord("claude.requests.acme", 0, h.offset, rid.encode(), value, headers)


@pytest.fixture
async def examined() -> Any:
    examiner = Examiner()
    await examiner.start()
    h = Harness(FakeClaude(), examiner=examiner)
    await h.dispatcher.start()
    yield h
    await h.dispatcher.stop(0)
    examiner.close()


async def test_a_heavy_request_is_served_with_the_body_the_helper_encoded(
    examined: Harness,
) -> None:
    await examined.send(_heavy(examined, "big-1"))
    await examined.settle(1)
    [response] = examined.responses()
    assert (response["request_id"], response["status"]) == ("big-1", "ok")
    [body] = examined.claude.bodies
    assert body is not None  # encoded by the helper, not at call time
    params = json.loads(body)
    assert params["messages"][0]["content"] == BIG
    assert body == json_body(params)


async def test_the_helper_sends_back_a_heavy_request_without_what_only_its_body_needs() -> None:
    """Ten thousand messages as Python objects took the worker 6-18 ms to unpickle."""
    examiner = Examiner()
    try:
        h = Harness(FakeClaude())
        value = _heavy(h, "big-2").value or b""
        writer, offset = CODEC.framing("ClaudeRequest", value)
        reader = CODEC.store.current["ClaudeRequest"].parsed
        partner = Partner(partner_id="acme", signing_secret_ref="env:S")
        examined = await examiner.examine(writer, reader, value, offset, partner)
        assert isinstance(examined, Examined)
        assert examined.params is not None
        assert "messages" not in examined.request
        assert "messages" not in examined.params
        assert examined.request["request_id"] == "big-2"
        inline = examine_value(writer, reader, value, offset, partner, encode_body=True)
        assert examined.body == inline.body  # the messages travel in the body
        assert (examined.est_input_tokens, examined.upper_input_tokens) == (
            inline.est_input_tokens,
            inline.upper_input_tokens,
        )
    finally:
        examiner.close()


async def test_heavy_refusals_are_the_ones_inline_intake_gives(examined: Harness) -> None:
    inline = Harness(FakeClaude())
    await inline.dispatcher.start()
    try:
        for h in (examined, inline):
            await h.send(_heavy(h, "hot", temperature=5.0))
            await h.send(_heavy(h, "elsewhere", partner_id="globex"))
            value = _heavy(h, "unknown-fingerprint").value or b""
            bad = value[:2] + b"\x01" * 8 + value[10:]
            h.offset += 1
            headers = signed_headers("acme", b"secret-acme", bad)
            key = b"unknown-fingerprint"
            await h.send(SourceRecord("claude.requests.acme", 0, h.offset, key, bad, headers))
            await h.settle(3)
        # (each harness built its own bytes: the payloads' digests differ)
        letters = [
            [(d["request_id"], d["reason"], d["detail"].split(" [payload")[0]) for d in dead]
            for dead in (examined.dead_letters(), inline.dead_letters())
        ]
        assert letters[0] == letters[1]
        assert [reason for _, reason, _ in letters[0]] == [
            "invalid_request",
            "auth_failed",
            "schema_error",
        ]
        assert examined.claude.calls == []
    finally:
        await inline.dispatcher.stop(0)


async def test_a_heavy_refusal_hashes_its_value_off_the_event_loop(
    examined: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing 10 MB for a dead letter takes 10 ms: on the loop, every partner waits."""
    import hashlib

    import pipeline.lifecycle.outcomes

    hashed_on: list[str] = []

    class Spy:
        @staticmethod
        def sha256(data: bytes) -> Any:
            hashed_on.append(threading.current_thread().name)
            return hashlib.sha256(data)

    monkeypatch.setattr(pipeline.lifecycle.outcomes, "hashlib", Spy)
    value = _heavy(examined, "unreadable").value or b""
    bad = value[:2] + b"\x00" * 8 + value[10:]  # an unknown fingerprint
    examined.offset += 1
    headers = signed_headers("acme", b"secret-acme", bad)
    record = SourceRecord("claude.requests.acme", 0, examined.offset, b"unreadable", bad, headers)
    await examined.send(record)
    await examined.settle(1)
    [letter] = examined.dead_letters()
    assert (letter["reason"], letter["payload_sha256"]) == (
        "schema_error",
        hashlib.sha256(bad).hexdigest(),
    )
    assert hashed_on
    assert threading.main_thread().name not in hashed_on


async def test_a_helper_that_dies_costs_one_record_and_is_replaced() -> None:
    crashing = Examiner(work=_crash)
    h = Harness(FakeClaude(), examiner=crashing)
    await h.dispatcher.start()
    try:
        await h.send(_heavy(h, "kills-it"))
        await h.settle(1)
        [letter] = h.dead_letters()
        assert (letter["request_id"], letter["reason"]) == ("kills-it", "schema_error")
        assert "killed the decoder process" in letter["detail"]
        crashing._work = Examiner()._work  # the next helper decodes normally
        await h.send(_heavy(h, "after"))
        await h.settle(2)
        assert [(r["request_id"], r["status"]) for r in h.responses()] == [
            ("kills-it", "error"),
            ("after", "ok"),
        ]
    finally:
        await h.dispatcher.stop(0)
        crashing.close()


HOLDER = """
import asyncio, sys
from pipeline.errors import SchemaError
from pipeline.lifecycle.examiner import Examiner
from pipeline.lifecycle.intake import Examined, examine_value
from pipeline.partners import Partner
from pipeline.lifecycle.pausing import MAX_EXAMINING
async def main():
    examiner = Examiner()
    await examiner.start()
    [pid] = [p.pid for p in examiner._started()._processes.values()]
    print(pid, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_a_helper_outlives_a_worker_killed_with_sigkill_by_a_second_at_most() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        helper = int(holder.stdout.readline())
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while _alive(helper) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the helper's exit
        assert not _alive(helper)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


class GatedExaminer(Examiner):
    """Examines in this process, once its gate opens (what a slow helper looks like)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def examine(
        self, writer_schema: Any, reader_schema: Any, data: bytes, offset: int, partner: Partner
    ) -> Examined | SchemaError:
        await self.gate.wait()
        try:
            return examine_value(writer_schema, reader_schema, data, offset, partner)
        except SchemaError as exc:
            return exc


async def test_a_heavy_record_being_examined_holds_up_no_record_behind_it() -> None:
    examiner = GatedExaminer()
    h = Harness(FakeClaude(), examiner=examiner)
    await h.dispatcher.start()
    try:
        async with asyncio.timeout(5):  # returns while the examination waits
            await h.send(_heavy(h, "heavy"))
        await h.send(h.record("light", request_id="light"))
        await h.settle(1)
        assert [r["request_id"] for r in h.responses()] == ["light"]
        examiner.gate.set()
        await h.settle(2)
        assert [r["request_id"] for r in h.responses()] == ["light", "heavy"]
    finally:
        await h.dispatcher.stop(0)


async def test_a_heavy_record_revoked_while_examined_is_left_to_its_new_owner() -> None:
    examiner = GatedExaminer()
    h = Harness(FakeClaude(), examiner=examiner)
    await h.dispatcher.start()
    await h.send(_heavy(h, "moved"))
    h.dispatcher.on_partitions_revoked([("claude.requests.acme", 0)])
    examiner.gate.set()
    await h.dispatcher.stop(5)  # waits for the examination to end
    assert (h.claude.calls, h.acked, h.publisher.published) == ([], [], [])
    assert h.dispatcher.in_flight == 0  # forgotten: a redelivery is a new arrival


async def test_heavy_records_being_examined_pause_their_partner_and_resume_it() -> None:
    events: list[tuple[str, str]] = []

    class Flow:
        def pause(self, partner_id: str) -> None:
            events.append(("pause", partner_id))

        def resume(self, partner_id: str) -> None:
            events.append(("resume", partner_id))

    examiner = GatedExaminer()
    h = Harness(FakeClaude(), examiner=examiner, flow=Flow())
    await h.dispatcher.start()
    try:
        for i in range(MAX_EXAMINING - 1):
            await h.send(_heavy(h, f"h{i}"))
        assert events == []  # megabytes each: a few fill the partner's bound
        await h.send(_heavy(h, "one-more"))
        assert events == [("pause", "acme")]
        examiner.gate.set()
        await h.settle(MAX_EXAMINING)
        assert events == [("pause", "acme"), ("resume", "acme")]
    finally:
        await h.dispatcher.stop(0)
