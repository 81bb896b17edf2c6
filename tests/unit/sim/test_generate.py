from typing import Any

import jsonschema
import pytest

from pipeline.dev.sim.blocks import thinking_signature
from pipeline.dev.sim.generate import (
    REDACTED_THINKING_TRIGGER,
    chosen_tools,
    generate,
    last_user_text,
    schema_instance,
)
from tests import corpus


def _msgs(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


def test_reply_quotes_the_prompt_and_is_deterministic() -> None:
    a = generate(_msgs("request 42 about kafka"), max_tokens=1000)
    b = generate(_msgs("request 42 about kafka"), max_tokens=1000)
    assert a == b
    assert a.text.startswith("Re: request 42 about kafka")
    assert a.stop_reason == "end_turn"
    assert 16 <= a.output_tokens <= 64
    assert a.output_tokens == len(a.text.split())


def test_different_prompts_give_different_replies() -> None:
    assert generate(_msgs("one"), 1000).text != generate(_msgs("two"), 1000).text


def test_max_tokens_truncates() -> None:
    g = generate(_msgs("hello"), max_tokens=5, target_tokens=40)
    assert (g.stop_reason, g.output_tokens) == ("max_tokens", 5)
    assert len(g.text.split()) == 5


def test_stop_sequence_cuts_the_reply() -> None:
    g = generate(_msgs("alpha beta STOP gamma"), max_tokens=100, stop_sequences=["STOP"])
    assert g.stop_reason == "stop_sequence"
    assert g.stop_sequence == "STOP"
    assert g.text == "Re: alpha beta "
    assert "gamma" not in g.text


def test_earliest_stop_sequence_wins() -> None:
    g = generate(_msgs("one two three"), max_tokens=100, stop_sequences=["three", "two"])
    assert g.stop_sequence == "two"


def test_last_user_text_reads_blocks_and_skips_assistant() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert last_user_text(messages) == "a b"


def test_fixed_target_length() -> None:
    assert generate(_msgs("x"), max_tokens=1000, target_tokens=200).output_tokens == 200


@pytest.mark.parametrize(
    "schema",
    [
        corpus.WEATHER_TOOL["input_schema"],
        corpus.STOCK_TOOL["input_schema"],
        {"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 5, "maximum": 9},
            "x": {"type": "number", "exclusiveMaximum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "mode": {"const": "fast"},
            "nested": {"type": "object", "properties": {"ok": {"type": "boolean"},
                                                         "none": {"type": "null"}}},
            "either": {"anyOf": [{"type": "string", "minLength": 12}, {"type": "integer"}]},
            "maybe": {"type": ["null", "string"]},
        }, "required": ["n", "tags"]},
    ],
)  # fmt: skip
def test_tool_input_validates_against_the_tools_schema(schema: dict[str, Any]) -> None:
    value = schema_instance(schema, ["what", "is", "ACME", "doing"])
    jsonschema.validate(value, schema)


def test_tool_choice_decides_which_tools_are_called() -> None:
    tools = [corpus.WEATHER_TOOL, corpus.TIME_TOOL]
    ask = "call get_weather and get_time"
    names = [t["name"] for t in chosen_tools(tools, None, ask)]
    assert names == ["get_weather", "get_time"]
    assert chosen_tools(tools, {"type": "auto"}, "just chat") == []
    assert chosen_tools(tools, {"type": "none"}, ask) == []
    assert [t["name"] for t in chosen_tools(tools, {"type": "any"}, "x")] == ["get_weather"]
    single = {"type": "auto", "disable_parallel_tool_use": True}
    assert len(chosen_tools(tools, single, ask)) == 1
    forced = {"type": "tool", "name": "get_time"}
    assert [t["name"] for t in chosen_tools(tools, forced, "x")] == ["get_time"]


def test_a_tool_use_reply_then_an_answer_that_quotes_the_result() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "use get_weather for Oslo"}]
    first = generate(messages, 500, tools=[corpus.WEATHER_TOOL])
    assert first.stop_reason == "tool_use"
    use = first.blocks[-1]
    assert use["type"] == "tool_use"
    assert use["name"] == "get_weather"
    jsonschema.validate(use["input"], corpus.WEATHER_TOOL["input_schema"])
    messages += [
        {"role": "assistant", "content": list(first.blocks)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"],
                                      "content": "minus four and snowing"}]},
    ]  # fmt: skip
    final = generate(messages, 500, tools=[corpus.WEATHER_TOOL])
    assert final.stop_reason == "end_turn"
    assert "minus four and snowing" in final.text


def test_thinking_comes_first_is_signed_and_counts_as_output() -> None:
    messages = [{"role": "user", "content": "is 1001 prime"}]
    reply = generate(messages, 2048, thinking_budget=1024)
    thinking, text = reply.blocks
    assert thinking["type"] == "thinking"
    assert text["type"] == "text"
    assert thinking["signature"] == thinking_signature(thinking["thinking"])
    assert reply.output_tokens == len(thinking["thinking"].split()) + len(text["text"].split())
    redacted = generate([{"role": "user", "content": REDACTED_THINKING_TRIGGER}], 2048,
                        thinking_budget=1024)  # fmt: skip
    assert redacted.blocks[0]["type"] == "redacted_thinking"
