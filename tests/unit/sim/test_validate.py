from __future__ import annotations

from typing import Any

import pytest

from pipeline.dev.sim.errors import ApiError
from pipeline.dev.sim.validate import validate_messages
from tests import corpus


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
        (_body(max_tokens=-1), 400, "greater than or equal to 0"),
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


def _user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


_PNG = {"type": "base64", "media_type": "image/png", "data": corpus.b64(corpus.png(4, 4))}
_TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}
_CC = {"type": "ephemeral"}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"messages": _user({"type": "image", "source": {**_PNG, "media_type": "image/bmp"}})},
         "messages.0.content.0.source.base64.media_type: Input should be 'image/jpeg'"),
        ({"messages": _user({"type": "image", "source": {**_PNG, "media_type": "image/gif"}})},
         "Image does not match the provided media type image/gif"),
        ({"messages": _user({"type": "image", "source": {**_PNG, "data": "%%%"}})},
         "invalid base64"),
        ({"messages": _user({"type": "image", "source": {
            **_PNG, "data": corpus.b64(corpus.png(1, 1) + b"\x00" * (5 * 1024 * 1024))}})},
         "image exceeds 5 MB maximum"),
        ({"messages": _user(*[{"type": "image", "source": _PNG}] * 101)}, "Too many images"),
        ({"messages": _user({"type": "document", "source": {
            "type": "base64", "media_type": "application/pdf", "data": corpus.b64(b"hi")}})},
         "The PDF specified was not valid"),
        ({"messages": _user({"type": "tool_use", "id": "t", "name": "n", "input": {}})},
         "`tool_use` blocks are not allowed in `user` messages"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
            {"type": "image", "source": _PNG}]}]},
         "`image` blocks are not allowed in `assistant` messages"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                       *_user({"type": "tool_result", "tool_use_id": "toolu_x"})]},
         "unexpected `tool_use_id` found in `tool_result` blocks: toolu_x"),
        ({"messages": _user(*[{"type": "text", "text": "x", "cache_control": _CC}] * 5)},
         "A maximum of 4 blocks with cache_control may be provided. Found 5."),
        ({"system": [{"type": "text", "text": "a", "cache_control": _CC},
                     {"type": "text", "text": "b", "cache_control": {**_CC, "ttl": "1h"}}]},
         "must not come after a ttl='5m'"),
        ({"messages": _user({"type": "text", "text": "x",
                             "cache_control": {**_CC, "ttl": "1d"}})},
         "cache_control.ttl: Input should be '5m' or '1h'"),
        ({"thinking": {"type": "enabled", "budget_tokens": 512}},
         "budget_tokens: Input should be greater than or equal to 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 1024},
         "`max_tokens` must be greater than `thinking.budget_tokens`"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2000,
          "temperature": 0.5}, "`temperature` may only be set to 1"),
        ({"tools": [{**_TOOL, "name": "get weather"}]}, "String should match pattern"),
        ({"tools": [_TOOL], "tool_choice": {"type": "tool", "name": "other"}},
         "Tool 'other' not found in provided tools"),
        ({"tool_choice": {"type": "any"}}, "requires tools to be provided"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "forged"}]}]},
         "Invalid `signature` in `thinking` block"),
        ({"service_tier": "priority"}, "service_tier: Input should be 'auto' or 'standard_only'"),
    ],
)  # fmt: skip
def test_blocks_tools_thinking_and_caching_are_judged_like_the_api(
    overrides: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ApiError) as info:
        validate_messages(_body(**overrides))
    assert info.value.status == 400
    assert fragment in info.value.message


# -- issue 24: what the API accepts, and the beta parameters only with their beta --

_MCP = [{"type": "url", "url": "https://mcp.example/sse", "name": "docs"}]


@pytest.mark.parametrize(
    ("field", "value", "beta"),
    [
        ("mcp_servers", _MCP, "mcp-client-2025-11-20"),
        ("context_management", {"edits": []}, "context-management-2025-06-27"),
        ("compaction", {"enabled": True}, "compact-2026-01-12"),
        ("fallbacks", [{"model": "claude-haiku-4-5"}], "server-side-fallback-2026-07-01"),
        ("thread", {"id": "thr_1"}, "message-threads-2026-08-12"),
    ],
)
def test_a_beta_parameter_is_accepted_only_when_the_header_names_its_beta(
    field: str, value: object, beta: str
) -> None:
    with pytest.raises(ApiError, match=f"{field}: Extra inputs are not permitted"):
        validate_messages(_body(**{field: value}))
    with pytest.raises(ApiError, match=f"{field}: Extra inputs are not permitted"):
        validate_messages(_body(**{field: value}), betas=("files-api-2025-04-14",))
    validate_messages(_body(**{field: value}), betas=("files-api-2025-04-14", beta))


@pytest.mark.parametrize(
    ("tool", "beta"),
    [
        ({"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6"},
         "advisor-tool-2026-03-01"),
        ({"type": "mcp_toolset", "mcp_server_name": "docs"}, "mcp-client-2025-11-20"),
    ],
)  # fmt: skip
def test_beta_tools_need_their_beta(tool: dict[str, Any], beta: str) -> None:
    with pytest.raises(ApiError, match=r"tools\.0\.type: Input tag"):
        validate_messages(_body(tools=[tool]))
    req = validate_messages(_body(tools=[tool]), betas=(beta,))
    assert req.tools == [tool]


def test_the_newer_blocks_tools_and_thinking_type_are_accepted() -> None:
    browser = {"type": "browser_toolset_20260801", "name": "browser"}
    tool_result = {"type": "tool_result", "tool_use_id": "toolu_1",
                   "content": [{"type": "tool_reference", "tool_name": "get_weather"}]}  # fmt: skip
    server_results = [
        {"type": kind, "tool_use_id": f"srvtoolu_{i}", "content": {"type": "x"}}
        for i, kind in enumerate(
            ("bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
             "tool_search_tool_result")
        )
    ]  # fmt: skip
    messages = [
        {"role": "user", "content": [{"type": "container_upload", "file_id": "file_1"},
                                     {"type": "text", "text": "run it"}]},
        {"role": "assistant", "content": [*server_results,
                                          {"type": "tool_use", "id": "toolu_1",
                                           "name": "tool_search", "input": {}}]},
        {"role": "user", "content": [tool_result]},
    ]  # fmt: skip
    tools = [browser, {"name": "tool_search", "input_schema": {"type": "object"}}]
    req = validate_messages(
        _body(messages=messages, tools=tools, thinking={"type": "between_tools"})
    )
    assert req.thinking == {"type": "between_tools"}
    with pytest.raises(ApiError, match=r"between_tools\.budget_tokens: Extra inputs"):
        validate_messages(_body(thinking={"type": "between_tools", "budget_tokens": 2048}))
    with pytest.raises(ApiError, match=r"messages\.0\.content\.0\.file_id: Field required"):
        validate_messages(
            _body(messages=[{"role": "user", "content": [{"type": "container_upload"}]}])
        )


def test_speed_and_region_are_read_and_checked() -> None:
    req = validate_messages(_body(speed="fast", inference_geo="eu"))
    assert (req.speed, req.inference_geo) == ("fast", "eu")
    with pytest.raises(ApiError, match="speed: Input should be 'standard' or 'fast'"):
        validate_messages(_body(speed="ludicrous"))
