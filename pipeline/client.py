"""The partner side: build, encode, sign and produce requests; read responses.

This is what a partner would write themselves (see the README's 20-line
example); the CLI's `send` and the demo use it too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.config import Settings
from pipeline.kafka import SyncProducer, read_topics
from pipeline.partners import requests_topic, responses_topic
from pipeline.schemas import Codec
from pipeline.security import signed_headers

DEFAULT_MODEL = "claude-haiku-4-5"


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
    return {
        "request_id": request_id or str(uuid.uuid4()),
        "partner_id": partner_id,
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
        "system": system,
        "temperature": temperature,
        "top_p": None,
        "top_k": None,
        "stop_sequences": list(stop_sequences),
        "metadata": metadata or {},
        "priority": priority,
        "deadline_ms": deadline_ms,
        "created_at_ms": now_ms if now_ms is not None else int(time.time() * 1000),
    }


class PartnerClient:
    """Produce signed requests as one partner."""

    def __init__(
        self, settings: Settings, partner_id: str, secret: bytes, codec: Codec | None = None
    ) -> None:
        self.settings = settings
        self.partner_id = partner_id
        self._secret = secret
        self._codec = codec or Codec()
        self._producer = SyncProducer(settings)

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
    ) -> None:
        """Produce bytes as-is; signed unless `headers` are given."""
        if headers is None:
            headers = signed_headers(self.partner_id, self._secret, value)
        self._producer.produce(topic or requests_topic(self.partner_id), value, key, headers)

    def flush(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout)


def read_responses(
    settings: Settings,
    partner_id: str,
    codec: Codec,
    *,
    follow: bool = False,
    idle_timeout: float | None = None,
    from_end: bool = False,
) -> Iterator[dict[str, Any]]:
    for msg in read_topics(
        settings,
        [responses_topic(partner_id)],
        follow=follow,
        idle_timeout=idle_timeout,
        from_end=from_end,
    ):
        value = msg.value()
        if value is not None:
            yield codec.decode("ClaudeResponse", value)


class ResponseWaiter:
    """Snapshot a response topic's end *before* sending, then wait for a request_id.

    Reading from the snapshot (not the end at wait time) means a fast response
    cannot slip past.
    """

    def __init__(self, settings: Settings, partner_id: str, codec: Codec) -> None:
        from pipeline.kafka import end_offsets

        self._settings = settings
        self._partner_id = partner_id
        self._codec = codec
        self._start = end_offsets(settings, responses_topic(partner_id))

    def wait(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        from pipeline.kafka import read_from

        for msg in read_from(self._settings, self._start, timeout=timeout):
            value = msg.value()
            if value is None or msg.key() != request_id.encode():
                continue
            return self._codec.decode("ClaudeResponse", value)
        return None
