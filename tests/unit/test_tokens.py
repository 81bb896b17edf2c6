from typing import Any

from pipeline.limits import tokens
from pipeline.limits.pricing import PriceTable
from tests import corpus


def test_text_is_ceil_chars_over_four() -> None:
    assert tokens.count_text("") == 0
    assert tokens.count_text("abc") == 1
    assert tokens.count_text("abcd") == 1
    assert tokens.count_text("abcde") == 2


def test_request_counts_framing_system_and_messages() -> None:
    messages = [{"role": "user", "content": "abcdefgh"}]  # 2 tokens + 4 overhead
    assert tokens.count_request(messages) == 3 + 6
    assert tokens.count_request(messages, system="abcd") == 3 + (3 + 1) + 6


def test_block_content_equals_string_content() -> None:
    as_str = [{"role": "user", "content": "hello world"}]
    as_blocks = [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    assert tokens.count_request(as_str) == tokens.count_request(as_blocks)


def _image(data: bytes) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": corpus.b64(data)}}  # fmt: skip


def test_images_cost_their_scaled_pixels() -> None:
    assert tokens.image_tokens(750, 100) == 100
    # a 12 MP photo is scaled to 1568 x 1176 first
    assert tokens.count_block(_image(corpus.jpeg(4032, 3024))) == tokens.image_tokens(1568, 1176)
    assert tokens.count_block(_image(corpus.png(64, 48))) == 5
    url = {"type": "image", "source": {"type": "url", "url": "https://e.com/x.png"}}
    assert tokens.count_block(url) == tokens.IMAGE_TOKENS
    assert tokens.bound_block(url) == tokens.IMAGE_MAX_TOKENS


def test_a_one_megabyte_image_does_not_reserve_a_million_tokens() -> None:
    big = corpus.png(1000, 1000) + b"\x00" * 1_000_000
    bound = tokens.upper_bound_params({"messages": [{"role": "user", "content": [_image(big)]}]})
    assert bound < 2_000
    assert bound >= tokens.count_block(_image(big))


def test_pdfs_cost_per_page_and_are_bounded_per_page() -> None:
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": corpus.b64(corpus.pdf(3))}}  # fmt: skip
    assert tokens.count_block(doc) == 3 * tokens.PDF_PAGE_TOKENS
    assert tokens.bound_block(doc) == 16 + 3 * tokens.PDF_PAGE_TOKENS_MAX
    hidden = {"type": "document", "source": {"type": "url", "url": "https://e.com/a.pdf"}}
    assert tokens.bound_block(hidden) == tokens.CONTEXT_WINDOW_MAX


def test_the_bound_is_never_below_the_count_for_the_corpus() -> None:
    for name, params in corpus.corpus().items():
        assert tokens.upper_bound_params(params) >= tokens.count_params(params), name


def test_tools_add_the_tool_use_system_prompt() -> None:
    messages = [{"role": "user", "content": "x"}]
    tool = corpus.WEATHER_TOOL
    with_tool = tokens.count_request(messages, tools=[tool])
    assert with_tool == tokens.count_request(messages) + tokens.TOOLS_OVERHEAD + tokens.count_tool(
        tool
    )


def test_cache_ttls_are_found_anywhere_in_the_request() -> None:
    assert tokens.cache_write_ttls(corpus.corpus()["system_cache_5m_and_1h"]) == {"5m", "1h"}
    assert tokens.cache_write_ttls(corpus.corpus()["tools_any"]) == {"5m"}
    assert tokens.cache_write_ttls(corpus.corpus()["multi_turn_text"]) == set()


def test_worst_case_prices_cache_writes_at_their_dearest() -> None:
    prices = PriceTable()
    plain = prices.worst_case("claude-haiku-4-5", 1_000_000, 0)
    assert plain == 1.0
    assert prices.worst_case("claude-haiku-4-5", 1_000_000, 0, cache_ttls={"5m"}) == 1.25
    assert prices.worst_case("claude-haiku-4-5", 1_000_000, 0, cache_ttls={"5m", "1h"}) == 2.0
