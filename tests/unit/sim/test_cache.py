from typing import Any

from pipeline.dev.sim.cache import PromptCache
from pipeline.limits import tokens
from tests.fakes import FakeClock

LONG = "word " * 100  # 125 tokens


def _request() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "question"}]
    return system, messages


def test_first_write_then_read_within_ttl_then_write_again(clock: FakeClock) -> None:
    cache = PromptCache(ttl_s=300, min_tokens=100, clock=clock)
    system, messages = _request()
    total = tokens.count_request(messages, system)
    first = cache.usage("k", "m", system, messages, None, total)
    prefix = tokens.BASE_TOKENS + tokens.count_system(system)
    assert first.cache_creation_input_tokens == prefix
    assert first.cache_read_input_tokens == 0
    assert first.input_tokens == total - prefix
    clock.advance(299)
    second = cache.usage("k", "m", system, messages, None, total)
    assert second.cache_read_input_tokens == prefix
    assert second.cache_creation_input_tokens == 0
    clock.advance(299)  # a hit refreshed the TTL
    assert cache.usage("k", "m", system, messages, None, total).cache_read_input_tokens == prefix
    clock.advance(301)
    assert cache.usage("k", "m", system, messages, None, total).cache_creation_input_tokens


def test_short_prefixes_and_unmarked_requests_are_not_cached(clock: FakeClock) -> None:
    cache = PromptCache(ttl_s=300, min_tokens=1024, clock=clock)
    system, messages = _request()
    usage = cache.usage("k", "m", system, messages, None, 500)
    assert (usage.input_tokens, usage.cache_creation_input_tokens) == (500, 0)
    plain = cache.usage("k", "m", "no marker", messages, None, 500)
    assert plain.cache_creation_input_tokens == 0


def test_keys_and_models_do_not_share_a_cache(clock: FakeClock) -> None:
    cache = PromptCache(ttl_s=300, min_tokens=10, clock=clock)
    system, messages = _request()
    cache.usage("k1", "m", system, messages, None, 1000)
    assert cache.usage("k2", "m", system, messages, None, 1000).cache_read_input_tokens == 0
    assert cache.usage("k1", "m2", system, messages, None, 1000).cache_read_input_tokens == 0


def test_marker_on_a_message_block_caches_up_to_it(clock: FakeClock) -> None:
    cache = PromptCache(ttl_s=300, min_tokens=10, clock=clock)
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "varying tail 1"},
            ],
        }
    ]
    total = tokens.count_request(messages)
    cache.usage("k", "m", None, messages, None, total)
    messages[0]["content"][1]["text"] = "varying tail 2"
    hit = cache.usage("k", "m", None, messages, None, total)
    assert hit.cache_read_input_tokens == tokens.BASE_TOKENS + tokens.MESSAGE_OVERHEAD + 125


def test_breakpoints_write_by_their_ttl_then_read_the_longest_prefix(clock: FakeClock) -> None:
    cache = PromptCache(ttl_s=300, min_tokens=10, clock=clock, ttl_1h_s=3600)
    system: list[dict[str, Any]] = [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}},
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "question"}]
    total = tokens.count_request(messages, system)
    first_prefix = tokens.BASE_TOKENS + tokens.SYSTEM_OVERHEAD + 125
    first = cache.usage("k", "m", system, messages, None, total)
    assert first.cache_creation_1h_input_tokens == first_prefix
    assert first.cache_creation_5m_input_tokens == 125
    assert first.input_tokens == total - first_prefix - 125
    clock.advance(600)  # the 5-minute entry is gone, the 1-hour one is not
    second = cache.usage("k", "m", system, messages, None, total)
    assert second.cache_read_input_tokens == first_prefix
    assert (second.cache_creation_5m_input_tokens, second.cache_creation_1h_input_tokens) == (
        125,
        0,
    )


def test_top_level_cache_control_marks_the_last_block(clock: FakeClock) -> None:
    cache = PromptCache(ttl_s=300, min_tokens=10, clock=clock)
    messages: list[dict[str, Any]] = [{"role": "user", "content": LONG}]
    total = tokens.count_request(messages)
    auto = {"type": "ephemeral"}
    assert (
        cache.usage("k", "m", None, messages, None, total, auto).cache_creation_input_tokens
        == total
    )
    assert cache.usage("k", "m", None, messages, None, total, auto).cache_read_input_tokens == total
