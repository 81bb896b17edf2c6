"""JSON-lines logging: one object per line, fields instead of prose.

Everything passed in `extra=` becomes a field (partner, request_id, topic,
partition, offset, attempt, latency_ms, ...). Secrets never reach here by
design; `Redactor` is the last line of defence for every secret value the
process has read: it scrubs the whole line as it is written, every string in
it (the message with its arguments, every field, nested dicts and lists, and
the exception text with its whole chain of causes), whatever the secret's
length.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
MASK = "[REDACTED]"


class Redactor:
    """Every secret value registered here is masked wherever it appears in a log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if secret and secret not in self._secrets:
            # longest first: a secret that contains another is masked whole;
            # a new tuple, so a line being scrubbed meanwhile is not disturbed
            self._secrets = tuple(sorted({*self._secrets, secret}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def scrub_value(self, value: Any) -> Any:
        """`value` with every string in it scrubbed: dicts (keys too), lists, tuples."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub_value(k): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub_value(v) for v in value]
        if isinstance(value, bytes):
            return self.scrub(value.decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.scrub(str(value))  # anything else is written as its str()


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            # formatException writes the whole chain (__cause__, __context__)
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(self._redactor.scrub_value(out), default=str, ensure_ascii=False)


def json_handler(
    stream: IO[str] | None = None, redactor: Redactor | None = None
) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redactor))
    return handler


def setup_logging(level: str | int = "INFO", redactor: Redactor | None = None) -> None:
    """Route the root logger to JSON lines on stderr (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(json_handler(redactor=redactor))
    root.setLevel(level)
    # One line per HTTP call is noise at INFO; our own "served" line says more.
    for noisy in ("httpx", "httpx2", "anthropic", "aiokafka.consumer.subscription_state"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
