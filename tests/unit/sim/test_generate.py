from typing import Any

from pipeline.sim.generate import generate, last_user_text


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
