"""JSON-lines logging: one object per line, fields instead of prose.

Everything passed in `extra=` becomes a field (partner, request_id, topic,
partition, offset, attempt, latency_ms, ...). Secrets never reach here by
design; `Redactor` is a last line of defence for values registered at start-up.
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


class Redactor(logging.Filter):
    """Replace registered secret values wherever they appear in a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = {s for s in secrets if len(s) >= 6}

    def add(self, secret: str) -> None:
        if len(secret) >= 6 and secret not in self._secrets:
            self._secrets = {*self._secrets, secret}  # copy: filter() may be iterating

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[REDACTED]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = self.scrub(record.getMessage())
            record.args = None
            for key, value in list(record.__dict__.items()):
                if key not in _STANDARD and isinstance(value, str):
                    setattr(record, key, self.scrub(value))
        return True


class JsonFormatter(logging.Formatter):
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
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def setup_logging(level: str | int = "INFO", redactor: Redactor | None = None) -> None:
    """Route the root logger to JSON lines on stderr (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = json_handler()
    if redactor is not None:
        handler.addFilter(redactor)
    root.addHandler(handler)
    root.setLevel(level)
    # One line per HTTP call is noise at INFO; our own "served" line says more.
    for noisy in ("httpx", "httpx2", "anthropic", "aiokafka.consumer.subscription_state"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
