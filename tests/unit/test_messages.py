"""The Messages API on the wire: params <-> ClaudeRequest, response <-> ClaudeResponse."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from pipeline.client import build_request, message_from_response, request_record
from pipeline.messages import (
    GOVERNED,
    MAX_JSON_DEPTH,
    NS,
    WireError,
    fields_to_params,
    params_to_fields,
    response_fields,
)
from pipeline.schemas import Codec
from tests import corpus

CODEC = Codec()


def _wire(record: dict[str, Any], name: str = "ClaudeRequest") -> dict[str, Any]:
    return CODEC.decode(name, CODEC.encode(name, record))


@pytest.mark.parametrize("name", sorted(corpus.corpus()))
def test_every_corpus_request_survives_the_wire_exactly(name: str) -> None:
    params = corpus.corpus()[name]
    record = request_record(params, partner_id="acme", request_id="r1")
    decoded = _wire(record)
    assert decoded == record  # the record is complete: nothing filled in by the reader
    betas = params.pop("betas", [])  # the anthropic-beta header, never the body
    assert decoded["betas"] == betas
    assert json.dumps(fields_to_params(decoded), sort_keys=True) == json.dumps(
        params, sort_keys=True
    )


def test_temperature_is_a_double_not_a_float() -> None:
    params = {"model": "m", "max_tokens": 1, "temperature": 0.7, "top_p": 0.9,
              "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    back = fields_to_params(_wire(request_record(params, partner_id="p")))
    assert back["temperature"] == 0.7
    assert back["top_p"] == 0.9


def test_sdk_extra_body_merges_into_the_body_like_the_sdk_does() -> None:
    params = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
              "extra_body": {"temperature": 0.2, "top_k": 5}}  # fmt: skip
    back = fields_to_params(_wire(request_record(params, partner_id="p")))
    assert (back["temperature"], back["top_k"]) == (0.2, 5)
    assert "extra_body" not in back


def test_typed_blocks_are_avro_records_and_unknown_ones_travel_whole() -> None:
    server_block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                    "input": {"query": "kafka"}}  # fmt: skip
    image_with_new_key = {"type": "image", "transformations": {"x": 1},
                          "source": {"type": "url", "url": "https://e.com/a.png"}}  # fmt: skip
    params = {"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [server_block, {"type": "text", "text": "a"}]},
        {"role": "user", "content": [image_with_new_key]},
    ]}  # fmt: skip
    record = request_record(params, partner_id="p")
    kinds = [[b[0] for b in m["content"]] for m in record["messages"][1:]]
    assert kinds == [[NS + "OtherBlock", NS + "TextBlock"], [NS + "OtherBlock"]]
    assert fields_to_params(_wire(record)) == params


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"max_tokens": 1, "messages": []}, "model"),
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 1}, "messages"),
        ({"model": "m", "max_tokens": 1, "messages": [], "stream": True}, "stream"),
        ({"model": "m", "max_tokens": 1, "messages": [], "timeout": 3}, "timeout"),
        ({"model": "m", "max_tokens": 1, "messages": [], "metadata": {"team": "x"}},
         "metadata.team"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
         "messages[0].role"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "not base64!"}}]}]},
         "messages[0].content[0].source.data"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "aGk=\n"}}]}]},
         "messages[0].content[0].source.data"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "n", "input": "{}"}]}]},
         "messages[0].content[0].input"),
        ({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": "t"}]},
         "tools[0].input_schema"),
        ({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "any", "x": 1}},
         "tool_choice.x"),
        ({"model": "m", "max_tokens": 1, "messages": [], "thinking": {"budget_tokens": 2}},
         "thinking.type"),
        ({"model": "m", "max_tokens": 1, "messages": [], "temperature": "hot"}, "temperature"),
        ({"model": "m", "max_tokens": 1, "messages": [],
          "cache_control": {"type": "ephemeral", "size": 1}}, "cache_control.size"),
        ({"model": "m", "max_tokens": 1, "messages": [], "system": [{"type": "image"}]},
         "system[0]"),
        ({"model": "m", "max_tokens": 1, "messages": [], "output_config": {"x": float("nan")}},
         "extra params"),
    ],
)  # fmt: skip
def test_what_the_wire_cannot_carry_is_a_value_error_naming_the_key(
    params: dict[str, Any], path: str
) -> None:
    with pytest.raises(ValueError, match=r"^" + path.replace("[", r"\[").replace("]", r"\]")):
        request_record(params, partner_id="p")


def test_deep_json_is_refused_on_both_sides() -> None:
    deep: Any = {}
    for _ in range(MAX_JSON_DEPTH + 2):
        deep = {"x": deep}
    params = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": deep}]}]}  # fmt: skip
    with pytest.raises(WireError, match="nested deeper"):
        params_to_fields(params)
    record = request_record({**params, "messages": [{"role": "user", "content": "x"}]},
                            partner_id="p")  # fmt: skip
    record["extra_params_json"] = "[" * 10_000 + "]" * 10_000
    with pytest.raises(WireError, match="extra_params_json: JSON nested deeper"):
        fields_to_params(record)


@pytest.mark.parametrize("key", sorted(GOVERNED - {"stream"}))
def test_extra_params_can_never_set_a_governed_parameter(key: str) -> None:
    record = build_request("p", "hi")
    record["extra_params_json"] = json.dumps({key: 1})
    with pytest.raises(WireError, match=f"extra_params_json.{key}: a governed parameter"):
        fields_to_params(record)


def _message(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "ZW5j"},
            {"type": "text", "text": "See ", "citations": None},
            {"type": "text", "text": "the doc.", "citations": [
                {"type": "char_location", "cited_text": "doc", "document_index": 0,
                 "document_title": "D", "start_char_index": 0, "end_char_index": 3},
                {"type": "page_location", "cited_text": "p", "document_index": 1,
                 "document_title": None, "start_page_number": 1, "end_page_number": 2}]},
            {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": [1, {"b": None}]}},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
             "input": {"query": "q"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
                {"type": "web_search_result", "url": "https://e.com", "title": "E",
                 "encrypted_content": "x", "page_age": None}]},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 3,
                  "cache_creation_input_tokens": 7,
                  "cache_creation": {"ephemeral_5m_input_tokens": 2,
                                     "ephemeral_1h_input_tokens": 5},
                  "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
                  "service_tier": "standard", "inference_geo": "us"},
        "container": None,
    }  # fmt: skip
    message.update(overrides)
    return message


def _response(message: dict[str, Any]) -> dict[str, Any]:
    record = {"request_id": "r", "partner_id": "p", "status": "ok", **response_fields(message),
              "error_type": None, "error_message": None, "attempts": 1, "latency_ms": 5,
              "completed_at_ms": 6, "upstream_request_id": "req_1"}  # fmt: skip
    return _wire(record, "ClaudeResponse")


@pytest.mark.parametrize(
    "stop_reason",
    ["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
     "model_context_window_exceeded"],
)  # fmt: skip
def test_a_response_comes_back_as_the_same_message(stop_reason: str) -> None:
    original = _message(stop_reason=stop_reason)
    record = _response(original)
    assert record["content"] == "See the doc."  # the plain text stays for text-only readers
    kinds = [b[0].removeprefix(NS) for b in record["blocks"]]
    assert kinds == ["ThinkingBlock", "RedactedThinkingBlock", "TextBlock", "TextBlock",
                     "ToolUseBlock", "ServerToolUseBlock", "OtherBlock"]  # fmt: skip
    assert record["usage"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 5}  # fmt: skip
    back = message_from_response(record)
    assert anthropic.types.Message.model_validate(back) == anthropic.types.Message.model_validate(
        original
    )
    # byte for byte too, but that a null inside a citation comes back absent
    assert _without_nulls(back) == _without_nulls(original)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_an_error_response_is_anthropics_error_envelope() -> None:
    record = build_request("p", "x")  # any record with status error will do
    envelope = message_from_response(
        {**record, "status": "error", "error_type": "quota_exceeded", "error_message": "spent"}
    )
    assert envelope["type"] == "error"
    assert envelope["error"] == {"type": "quota_exceeded", "message": "spent"}


def test_records_from_before_blocks_become_one_text_block() -> None:
    old = {"request_id": "r", "partner_id": "p", "status": "ok", "model": "m",
           "content": "hello", "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 0,
                     "cache_creation_input_tokens": 0},
           "blocks": None, "message_id": None}  # fmt: skip
    message = anthropic.types.Message.model_validate(message_from_response(old))
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "hello"  # type: ignore[union-attr]


# -- issue 24 (part): every parameter of the SDK's create carried or refused ------


def _sdk_create_params() -> set[str]:
    import inspect

    from anthropic.resources.beta.messages import Messages as BetaMessages
    from anthropic.resources.messages import Messages
    from anthropic.types import message_create_params as plain
    from anthropic.types.beta import message_create_params as beta

    keys = set(plain.MessageCreateParamsBase.__annotations__)
    keys |= set(beta.MessageCreateParamsBase.__annotations__)
    for create in (Messages.create, BetaMessages.create):
        keys |= set(inspect.signature(create).parameters) - {"self"}
    return keys


def test_every_parameter_the_sdk_accepts_is_carried_or_refused_by_name() -> None:
    # Before: speed, inference_geo, container, mcp_servers, workspace_id and
    # user_profile_id vanished from the record without an error. A key a newer
    # SDK adds fails here until it is placed in one of these sets.
    from pipeline.messages import BETA_PARAMS, CARRIED, REFUSED, SDK_OPTIONS, TYPED_PARAMS

    handled = (
        TYPED_PARAMS | CARRIED | set(REFUSED) | set(BETA_PARAMS) | SDK_OPTIONS
        | {"extra_body", "betas"}
    )  # fmt: skip
    assert _sdk_create_params() - handled == set()
    base = {"model": "claude-haiku-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    for key, why in REFUSED.items():
        for params in ({**base, key: "x"}, {**base, "extra_body": {key: "x"}}):
            with pytest.raises(ValueError, match=f"^{key}: ") as info:
                request_record(params, partner_id="p")
            assert why in str(info.value)
    values = {"speed": "fast", "inference_geo": "eu", "container": {"id": "c1", "skills": []},
              "output_config": {"effort": "low"}, "diagnostics": {"x": 1}}  # fmt: skip
    assert set(values) == CARRIED
    for key, value in values.items():
        for params in ({**base, key: value}, {**base, "extra_body": {key: value}}):
            record = _wire(request_record(params, partner_id="p"), "ClaudeRequest")
            assert fields_to_params(record)[key] == value  # reaches Claude exactly


def test_beta_parameters_travel_only_with_a_beta_named() -> None:
    from pipeline.messages import BETA_PARAMS

    base = {"model": "claude-haiku-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    servers = [{"type": "url", "url": "https://mcp.example/sse", "name": "docs"}]
    for key in BETA_PARAMS:
        value = servers if key == "mcp_servers" else {"edits": []}
        with pytest.raises(ValueError, match=f"^{key}: a beta parameter: name its beta"):
            request_record({**base, key: value}, partner_id="p")
        params = {**base, key: value, "betas": ["mcp-client-2025-11-20"]}
        record = _wire(request_record(params, partner_id="p"), "ClaudeRequest")
        assert record["betas"] == ["mcp-client-2025-11-20"]
        assert fields_to_params(record)[key] == value  # reaches Claude exactly
        assert "betas" not in fields_to_params(record)  # a header, never the body
        # a record that carries one without a beta is refused at the worker too
        with pytest.raises(ValueError, match=f"^extra_params_json.{key}: a beta parameter"):
            fields_to_params({**record, "betas": []})


@pytest.mark.parametrize(
    ("betas", "error"),
    [
        ("mcp-client-2025-11-20", "betas: must be a list"),
        (["MCP"], r"betas\[0\]: not a beta name"),
        (["a\r\nx-injected: 1"], r"betas\[0\]: not a beta name"),
        ([f"b{i}" for i in range(17)], "betas: at most 16"),
    ],
)
def test_betas_that_are_not_names_are_refused(betas: object, error: str) -> None:
    base = {"model": "claude-haiku-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with pytest.raises(ValueError, match=error):
        request_record({**base, "betas": betas}, partner_id="p")
    record = _wire(request_record(base, partner_id="p"), "ClaudeRequest")
    with pytest.raises(ValueError, match=error):
        fields_to_params({**record, "betas": betas})  # a forged record, at the worker


def test_a_key_the_sdk_does_not_take_is_refused_unless_it_comes_in_extra_body() -> None:
    from pipeline.messages.governance import SDK_KEYWORDS

    # no stale keyword either (this SDK takes the sampling parameters through
    # extra_body only; partners may still pass them as parameters, the API's names)
    assert _sdk_create_params() | {"temperature", "top_p", "top_k"} == SDK_KEYWORDS
    base = {"model": "claude-haiku-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with pytest.raises(ValueError, match=r"^temprature: not a parameter of messages\.create"):
        request_record({**base, "temprature": 0.5}, partner_id="p")  # a typo is not dropped
    # the SDK's own way to send a parameter newer than it: it travels exactly
    record = _wire(request_record({**base, "extra_body": {"new_knob": {"a": 1}}}, partner_id="p"))
    assert fields_to_params(record)["new_knob"] == {"a": 1}
