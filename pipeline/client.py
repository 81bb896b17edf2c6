"""The partner library: Messages API params in, Messages API responses out, over Kafka.

`request_record` turns what a partner would pass to ``client.messages.create``
into a ClaudeRequest record; `PartnerClient` encodes, signs and produces it;
`message_from_response` turns a ClaudeResponse record back into the Messages API
response. The README's 20-line example shows the same by hand; the CLI's `send`,
the demo and the examples use this module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from pipeline import messages
from pipeline.config import Settings
from pipeline.kafka.clients import SyncProducer, read_topics
from pipeline.partners import requests_topic, responses_topic
from pipeline.records import ClaudeResponse
from pipeline.schemas import Codec
from pipeline.security.signing import signed_headers

DEFAULT_MODEL = "claude-haiku-4-5"

#: A Messages API params dict, as passed to ``client.messages.create(**params)``.
Params = Mapping[str, Any]
PRIORITIES = ("interactive", "batch")


def request_record(
    params: Params,
    *,
    partner_id: str,
    request_id: str | None = None,
    priority: str = "interactive",
    deadline_ms: int | None = None,
) -> dict[str, Any]:
    """A ClaudeRequest record from Messages API params.

    ``params`` is exactly what a partner would pass to ``client.messages.create``
    (or ``client.beta.messages.create``, ``betas`` included): model, max_tokens,
    messages (string or content blocks: text, image, document, tool_use,
    tool_result, thinking, redacted_thinking, search_result, and any other kind as
    JSON), system, tools, tool_choice, thinking, temperature, top_p, top_k,
    stop_sequences, metadata, service_tier, cache_control, speed, inference_geo,
    container, output_config, diagnostics, the beta parameters with a beta, and
    in ``extra_body`` parameters newer than the SDK. Raises ValueError naming the
    key for anything the wire cannot carry; nothing is dropped silently (see the
    README, "What a request can carry").
    """
    if priority not in PRIORITIES:
        raise messages.WireError("priority", f"must be one of {', '.join(PRIORITIES)}")
    if deadline_ms is not None and (not isinstance(deadline_ms, int) or deadline_ms < 0):
        raise messages.WireError("deadline_ms", "must be unix epoch milliseconds")
    fields = messages.params_to_fields(params)
    return {
        "request_id": request_id or str(uuid.uuid4()),
        "partner_id": partner_id,
        **fields,
        "priority": priority,
        "deadline_ms": deadline_ms,
        "created_at_ms": int(time.time() * 1000),
    }


def message_from_response(record: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages API response for a ClaudeResponse record.

    For an ``ok`` record, ``anthropic.types.Message.model_validate`` accepts it and it
    equals what Claude returned. For an ``error`` record it is Anthropic's error
    envelope, ``{"type": "error", "error": {"type": reason, "message": detail}}``.
    """
    return messages.message_from_record(record)


def build_request(
    partner_id: str,
    prompt: str,
    *,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 256,
    request_id: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    stop_sequences: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
    priority: str = "interactive",
    deadline_ms: int | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """A one-prompt request (what `send --prompt` and the demo send).

    `metadata` here is the partner's own tags on the record (never sent to Claude,
    except `user_id`, which becomes the API's metadata.user_id).
    """
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if system is not None:
        params["system"] = system
    if temperature is not None:
        params["temperature"] = temperature
    if stop_sequences:
        params["stop_sequences"] = list(stop_sequences)
    record = request_record(
        params,
        partner_id=partner_id,
        request_id=request_id,
        priority=priority,
        deadline_ms=deadline_ms,
    )
    record["metadata"].update(metadata or {})
    if now_ms is not None:
        record["created_at_ms"] = now_ms
    return record


class PartnerClient:
    """Produce signed requests as one partner."""

    def __init__(
        self,
        settings: Settings,
        partner_id: str,
        secret: bytes,
        codec: Codec | None = None,
        *,
        linger_ms: float | None = None,
        one_shot: bool = False,
    ) -> None:
        """`linger_ms`: how long the producer waits to batch records (default 5 ms);
        0 for a latency-sensitive partner sending one request at a time.

        Keep one client for many requests: an idempotent producer's first record
        waits about 0.5 s on Apache Kafka (librdkafka asks for its producer id on
        a timer once a broker is up: 510 ms measured, 15 ms without idempotence),
        later ones milliseconds. `one_shot`: a client for one request and gone
        (the CLI's `send`) skips idempotence, which guards a long-lived
        producer's retries: the worker answers a request_id once anyway and
        turns a copy into a `duplicate` audit dead letter."""
        self.settings = settings
        self.partner_id = partner_id
        self._secret = secret
        self._codec = codec or Codec()
        overrides: dict[str, Any] = {} if linger_ms is None else {"linger.ms": linger_ms}
        if one_shot:
            overrides["enable.idempotence"] = "false"
        self._producer = SyncProducer(settings, **overrides)

    def send(self, request: dict[str, Any]) -> str:
        value = self._codec.encode("ClaudeRequest", request, requests_topic(self.partner_id))
        self.send_raw(str(request["request_id"]).encode(), value)
        return str(request["request_id"])

    def send_raw(
        self,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        topic: str | None = None,
        partition: int | None = None,
    ) -> None:
        """Produce bytes as-is; signed unless `headers` are given."""
        if headers is None:
            headers = signed_headers(self.partner_id, self._secret, value)
        self._producer.produce(
            topic or requests_topic(self.partner_id), value, key, headers, partition
        )

    def flush(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout)


def partner_reader_group(partner_id: str) -> str:
    """The group id of a partner's response readers: under `<id>.`, the prefix its
    ACLs grant (they never join the group or commit; librdkafka needs one)."""
    return f"{partner_id}.responses"


def read_responses(
    settings: Settings,
    partner_id: str,
    codec: Codec,
    *,
    follow: bool = False,
    idle_timeout: float | None = None,
    from_end: bool = False,
) -> Iterator[ClaudeResponse]:
    for msg in read_topics(
        settings,
        [responses_topic(partner_id)],
        follow=follow,
        idle_timeout=idle_timeout,
        from_end=from_end,
        group_id=partner_reader_group(partner_id),
    ):
        value = msg.value()
        if value is not None:
            yield cast(ClaudeResponse, codec.decode("ClaudeResponse", value))


class ResponseWaiter:
    """Snapshot a response topic's end *before* sending, then wait for a request_id.

    Reading from the snapshot (not the end at wait time) means a fast response
    cannot slip past.
    """

    def __init__(self, settings: Settings, partner_id: str, codec: Codec) -> None:
        from pipeline.kafka.clients import end_offsets

        self._settings = settings
        self._partner_id = partner_id
        self._codec = codec
        self._group = partner_reader_group(partner_id)
        self._start = end_offsets(settings, responses_topic(partner_id), group_id=self._group)

    def wait(self, request_id: str, timeout: float) -> ClaudeResponse | None:
        from pipeline.kafka.clients import read_from

        for msg in read_from(self._settings, self._start, timeout=timeout, group_id=self._group):
            value = msg.value()
            if value is None or msg.key() != request_id.encode():
                continue
            return cast(ClaudeResponse, self._codec.decode("ClaudeResponse", value))
        return None
