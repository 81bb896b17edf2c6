from __future__ import annotations

import anthropic
import httpx2
import pytest

from pipeline.client import build_request
from pipeline.errors import UpstreamError
from pipeline.messages import fields_to_params
from pipeline.upstream.claude import classify, parse_retry_after, to_result

REQ = httpx2.Request("POST", "http://sim/v1/messages")


def _status_error(status: int, headers: dict[str, str] | None = None) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": "some_error", "message": "nope"}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=REQ)
    cls = {429: anthropic.RateLimitError, 400: anthropic.BadRequestError}.get(
        status, anthropic.APIStatusError
    )
    return cls("nope", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "retriable", "error_class"),
    [(429, True, "4xx"), (500, True, "5xx"), (529, True, "5xx"), (400, False, "4xx"),
     (401, False, "4xx"), (404, False, "4xx"), (408, True, "4xx")],
)  # fmt: skip
def test_status_errors(status: int, retriable: bool, error_class: str) -> None:
    err = classify(_status_error(status, {"retry-after": "7"}))
    assert (err.status, err.retriable, err.error_class) == (status, retriable, error_class)
    assert err.retry_after == 7.0
    assert err.error_type == "some_error"


def test_transport_errors() -> None:
    assert classify(anthropic.APITimeoutError(REQ)).error_class == "timeout"
    conn = classify(anthropic.APIConnectionError(request=REQ))
    assert (conn.error_class, conn.retriable) == ("connection", True)


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    # an HTTP date (before: ignored): seconds from now until then, 0 if past
    at = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    date = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert parse_retry_after(date, now=lambda: at - 12.5) == 12.5
    assert parse_retry_after(date, now=lambda: at + 60) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_params_forward_only_what_the_api_takes() -> None:
    req = build_request(
        "acme", "hi", system="s", temperature=0.2, metadata={"user_id": "u", "x": "y"}
    )
    params = fields_to_params(req)
    assert params["system"] == "s"
    assert params["temperature"] == 0.2
    assert params["metadata"] == {"user_id": "u"}
    assert "stop_sequences" not in params
    assert "top_p" not in params


def test_a_response_body_becomes_our_result() -> None:

    body = {
        "model": "claude-haiku-4-5",
        "content": [
            {"type": "text", "text": "one "},
            {"type": "tool_use", "id": "t", "name": "n", "input": {}},
            {"type": "text", "text": "two"},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": None},
    }
    got = to_result(body, {"request-id": "req_1"})
    assert got.message is body  # the whole message travels on, for the response record
    assert got.stop_reason == "stop_sequence"
    assert (got.input_tokens, got.output_tokens) == (7, 3)
    assert (got.cache_read_input_tokens, got.cache_creation_input_tokens) == (0, 0)
    assert got.request_id == "req_1"


@pytest.mark.parametrize("body", [[], {"content": []}, {"usage": "none"}, "text"])
def test_a_body_that_is_no_message_is_a_retriable_upstream_error(body: object) -> None:

    with pytest.raises(UpstreamError) as info:
        to_result(body, {})  # type: ignore[arg-type]
    assert info.value.retriable
    assert info.value.status == 502


async def test_a_prepared_key_s_client_is_made_off_the_event_loop_and_used_by_its_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Made at a key's first request, the SDK client (CA bundle, HTTP stack imports)
    held the event loop 105 ms."""
    import threading

    from pipeline.upstream.claude import ClaudeClient

    client = ClaudeClient("http://127.0.0.1:9", 1.0)
    made_on: list[str] = []
    new_client = client._new_client

    def spy(api_key: str) -> object:
        made_on.append(threading.current_thread().name)
        return new_client(api_key)

    monkeypatch.setattr(client, "_new_client", spy)
    try:
        await client.prepare("sk-a")
        await client.prepare("sk-a")  # once per key
        prepared = client._clients["sk-a"]
        with pytest.raises(UpstreamError):  # nothing listens on port 9
            await client.create("sk-a", {"model": "m", "max_tokens": 1, "messages": []})
        assert client._clients["sk-a"] is prepared
        assert len(made_on) == 1
        assert made_on[0] != threading.main_thread().name
    finally:
        await client.close()


def test_a_request_s_betas_and_its_partner_s_workspace_become_headers() -> None:
    from pipeline.upstream.claude import request_headers

    assert request_headers([], None) == {}
    assert request_headers(["mcp-client-2025-11-20", "compact-2026-01-12"], "wrkspc_01") == {
        "anthropic-beta": "mcp-client-2025-11-20,compact-2026-01-12",
        "anthropic-workspace-id": "wrkspc_01",
    }
