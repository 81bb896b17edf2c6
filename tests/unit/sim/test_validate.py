from __future__ import annotations

from typing import Any

import pytest

from pipeline.sim.validate import ApiError, validate_messages


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def test_valid_request_passes() -> None:
    req = validate_messages(_body(system="be brief", stop_sequences=["x"]))
    assert (req.model.id, req.max_tokens, req.stop_sequences) == ("claude-sonnet-4-6", 100, ("x",))


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (_body(model=None), 400, "model: Field required"),
        (_body(model="claude-nonexistent"), 404, "model: claude-nonexistent"),
        (_body(max_tokens=None), 400, "max_tokens: Field required"),
        (_body(max_tokens=0), 400, "greater than or equal to 1"),
        (_body(max_tokens="10"), 400, "valid integer"),
        (_body(max_tokens=64_001), 400, "maximum allowed number of output tokens"),
        (_body(messages=None), 400, "messages: Field required"),
        (_body(messages=[]), 400, "at least one message"),
        (_body(messages=[{"role": "assistant", "content": "x"}]), 400, "first message"),
        (_body(messages=[{"role": "system", "content": "x"}]), 400, "'user' or 'assistant'"),
        (_body(messages=[{"role": "user", "content": ""}]), 400, "non-empty"),
        (_body(messages=[{"role": "user"}]), 400, "content: Field required"),
        (_body(temperature=1.5), 400, "temperature"),
        (_body(bogus=1), 400, "bogus: Extra inputs are not permitted"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_invalid_requests_are_refused_like_the_api(
    body: object, status: int, fragment: str
) -> None:
    with pytest.raises(ApiError) as info:
        validate_messages(body)
    assert info.value.status == status
    expected_type = "not_found_error" if status == 404 else "invalid_request_error"
    assert info.value.error_type == expected_type
    assert fragment in info.value.message


def test_aliases_resolve() -> None:
    assert validate_messages(_body(model="claude-haiku-4-5")).model.id == (
        "claude-haiku-4-5-20251001"
    )
