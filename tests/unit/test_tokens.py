from pipeline import tokens


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


def test_images_and_tool_results_are_billed() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    assert tokens.count_block(image) == tokens.IMAGE_TOKENS
    result = {"type": "tool_result", "tool_use_id": "t", "content": "abcdefgh"}
    assert tokens.count_block(result) == 2
