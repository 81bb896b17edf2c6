"""Redaction that holds: no registered secret survives anywhere in a log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from pipeline.ops.logs import MASK, Redactor, json_handler

SECRET = "sk-ant-very-secret-value"
SHORT = "pw9"  # secrets shorter than six characters are masked too


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = json_handler(stream, Redactor([SECRET, SHORT]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _line(stream: io.StringIO) -> str:
    text = stream.getvalue()
    assert SECRET not in text
    assert SHORT not in text
    return text


def test_message_and_its_arguments(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.info("key %s and %s", SECRET, SHORT)
    assert json.loads(_line(stream))["msg"] == f"key {MASK} and {MASK}"


def test_fields_nested_dicts_lists_and_keys(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.warning(
        "x",
        extra={
            "detail": f"Bearer {SECRET}",
            "headers": {"authorization": SECRET, SECRET: "as a key", "n": [SHORT, 1, None]},
            "raw": SECRET.encode(),
            "obj": type("Opaque", (), {"__str__": lambda self: SECRET})(),
        },
    )
    line = json.loads(_line(stream))
    assert line["headers"]["authorization"] == MASK
    assert line["headers"]["n"] == [MASK, 1, None]
    assert line["raw"] == MASK
    assert line["obj"] == MASK


def test_exception_text_and_its_whole_chain(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged

    def fail() -> None:
        try:
            raise ValueError(f"inner {SECRET}")  # noqa: TRY301 (a chain to log)
        except ValueError as inner:
            raise RuntimeError(f"outer {SHORT}") from inner

    try:
        fail()
    except RuntimeError:
        logger.exception("failed with %r", SECRET)
    exc = json.loads(_line(stream))["exc"]
    assert "ValueError: inner [REDACTED]" in exc
    assert "RuntimeError: outer [REDACTED]" in exc


def test_json_escaped_secrets_are_masked_before_escaping(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    tricky = 'p"a\\ss\nword'
    Redactor.add(logger.handlers[0].formatter._redactor, tricky)  # type: ignore[union-attr]
    logger.info("x", extra={"v": f"<{tricky}>"})
    assert json.loads(stream.getvalue())["v"] == f"<{MASK}>"


def test_the_settings_register_every_secret_they_hold() -> None:
    settings = Settings(
        anthropic_api_key="sk-a",
        sasl_password="kafka-pw",
        schema_registry_url="https://user:registry-pw@registry.example",
    )
    assert sorted(settings.secret_values()) == ["kafka-pw", "registry-pw", "sk-a"]


def test_latency_buckets_are_at_most_one_and_a_half_apart_from_50_ms_to_60_s() -> None:
    from itertools import pairwise

    from pipeline.ops.metrics import LATENCY_BUCKETS

    inside = [b for b in LATENCY_BUCKETS if 0.05 <= b <= 60]
    ratios = [high / low for low, high in pairwise(inside)]
    assert max(ratios) <= 1.5, max(ratios)  # 2.25 -> 3.5 was 1.56
