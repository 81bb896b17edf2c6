"""Write the fuzz seeds and the issue-23 regression inputs (run once; the files
are committed): `python -m tests.fuzz.make_seeds`."""

from __future__ import annotations

from pathlib import Path

from pipeline.client import build_request, request_record
from pipeline.partners import Partner
from tests.fuzz.targets import CODEC, FINGERPRINT, NOW

HERE = Path(__file__).parent
HEADER = len(b"\xc3\x01") + len(FINGERPRINT)


def _body(record: dict[str, object]) -> bytes:
    return CODEC.encode("ClaudeRequest", record)[HEADER:]


def main() -> None:
    now_ms = int(NOW * 1000)
    seeds, regressions = HERE / "seeds", HERE / "regressions"
    for d in (
        seeds / "intake",
        seeds / "registry",
        regressions / "intake",
        regressions / "registry",
    ):
        d.mkdir(parents=True, exist_ok=True)
    plain = build_request("acme", "hello", request_id="r1", now_ms=now_ms)
    (seeds / "intake" / "plain").write_bytes(b"\x01" + _body(plain))
    rich = request_record(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "system": "be brief",
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "q"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": "42"}]},
            ],
            "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        },
        partner_id="acme",
        request_id="r1",
    )  # fmt: skip
    rich["created_at_ms"] = now_ms
    (seeds / "intake" / "tools").write_bytes(b"\x01" + _body(rich))
    # A: created before time began (the refusal's latency overflowed Avro's long)
    old = build_request("acme", "old", request_id="r1", now_ms=-(2**62))
    (regressions / "intake" / "created-at-overflow").write_bytes(b"\x01" + _body(old))
    # A: a signed replay count of 10**30 and more (flags 2: replay header)
    (regressions / "intake" / "replay-count-overflow").write_bytes(
        b"\x03" + b"\xff" * 16 + _body(plain)
    )
    # B: many headers (flags 4, count in the high bits)
    (regressions / "intake" / "many-headers").write_bytes(b"\xfd" + _body(plain))
    # D: a lone surrogate escape in a tool's input_schema
    name, tool = rich["tools"][0]
    lone = {**rich, "tools": [(name, {**tool, "input_schema_json": '{"description":"\\udfff"}'})]}
    (regressions / "intake" / "lone-surrogate").write_bytes(b"\x01" + _body(lone))
    # 2: more messages than the bound (a block header of 10**7 items, then nothing)
    body = _body(plain)
    one = b"\x02\x00\x00\x0ahello\x00"
    assert one in body
    (regressions / "intake" / "ten-million-messages").write_bytes(
        b"\x01" + body.replace(one, b"\x80\xda\xc4\x09" + b"\x00\x00\x00" * 1000)
    )
    acme = Partner("acme", "env:PARTNER_ACME", updated_at_ms=1_000)
    config = CODEC.encode("PartnerConfig", acme.to_record())
    (seeds / "registry" / "acme").write_bytes(b"\x04acme" + config)
    # C: a file: ref with a NUL byte (realpath raised ValueError in the follower)
    raw = {**acme.to_record(), "signing_secret_ref": "file:/run/secrets/a\x00b"}
    nul = CODEC.encode("PartnerConfig", {**raw, "signing_secret_ref": "file:/run/secrets/aXb"})
    nul = nul.replace(b"aXb", b"a\x00b")
    (regressions / "registry" / "nul-in-ref").write_bytes(b"\x04acme" + nul)
    # 7: a partner id with a trailing newline
    newline = CODEC.encode("PartnerConfig", {**acme.to_record(), "partner_id": "acmeX"})
    (regressions / "registry" / "id-newline").write_bytes(
        b"\x05acme\n" + newline.replace(b"acmeX", b"acme\n")
    )


if __name__ == "__main__":
    main()
