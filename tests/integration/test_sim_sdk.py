"""The official SDK against the real simulator over HTTP: it cannot tell the difference."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic, DefaultAioHttpClient

from tests import corpus
from tests.integration.conftest import SimFactory

MODEL = "claude-sonnet-4-6"

ClientFactory = Callable[..., AsyncAnthropic]


@pytest.fixture
async def client_factory() -> AsyncIterator[ClientFactory]:
    clients: list[AsyncAnthropic] = []

    def make(url: str, key: str = "sk-test", **kw: Any) -> AsyncAnthropic:
        client = AsyncAnthropic(
            base_url=url,
            api_key=key,
            max_retries=0,
            http_client=DefaultAioHttpClient(),
            **kw,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def _user(text: str) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": text}]


async def test_success_parses_into_sdk_types(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    sim = await sim_factory()
    client = client_factory(sim.url)
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=200, messages=_user("request 17: summarise Kafka")
    )
    message = await raw.parse()
    assert isinstance(message, anthropic.types.Message)
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Re: request 17: summarise Kafka")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 3 + 4 + 7
    assert message.usage.output_tokens == len(message.content[0].text.split())
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["request-id"].startswith("req_")
    assert int(raw.headers["anthropic-ratelimit-requests-remaining"]) == 3999
    assert raw.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")


async def test_max_tokens_and_stop_sequences(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory(output_tokens=40)).url)
    short = await client.messages.create(model=MODEL, max_tokens=3, messages=_user("a b c d"))
    assert (short.stop_reason, short.usage.output_tokens) == ("max_tokens", 3)
    stopped = await client.messages.create(
        model=MODEL, max_tokens=100, messages=_user("keep HALT rest"), stop_sequences=["HALT"]
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "HALT")


@pytest.mark.parametrize(
    ("config", "kwargs", "error"),
    [
        ({"keys": frozenset({"right"})}, {}, anthropic.AuthenticationError),
        ({}, {"max_tokens": -1}, anthropic.BadRequestError),
        ({}, {"model": "claude-imaginary-9"}, anthropic.NotFoundError),
        ({"fail_rates": {"500": 1.0}}, {}, anthropic.InternalServerError),
        ({"fail_rates": {"529": 1.0}}, {}, anthropic.OverloadedError),
    ],
)
async def test_errors_map_to_sdk_classes(
    sim_factory: SimFactory,
    client_factory: ClientFactory,
    config: dict[str, Any],
    kwargs: dict[str, Any],
    error: type[anthropic.APIStatusError],
) -> None:
    client = client_factory((await sim_factory(**config)).url, key="wrong")
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 10, "messages": _user("x")}
    params.update(kwargs)
    with pytest.raises(error) as info:
        await client.messages.create(**params)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["request_id"] == info.value.response.headers["request-id"]
    assert (
        body["error"]["type"]
        == {
            anthropic.AuthenticationError: "authentication_error",
            anthropic.BadRequestError: "invalid_request_error",
            anthropic.NotFoundError: "not_found_error",
            anthropic.InternalServerError: "api_error",
            anthropic.OverloadedError: "overloaded_error",
        }[error]
    )


async def test_rate_limit_error_carries_retry_after(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory(rpm=2)).url)
    for _ in range(2):
        await client.messages.create(model=MODEL, max_tokens=10, messages=_user("x"))
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model=MODEL, max_tokens=10, messages=_user("x"))
    headers = info.value.response.headers
    assert headers["retry-after"] == "30"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "2 requests per minute" in str(info.value)


# The SDK's aiohttp transport warns when it sends a huge body in one piece.
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_body_over_32_mb_is_request_too_large(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory()).url)
    with pytest.raises(anthropic.RequestTooLargeError) as info:
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=_user("x" * (33 * 1024 * 1024))
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "request_too_large"


async def test_missing_version_and_unknown_route_use_the_envelope(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sim.url}/v1/messages", json={}, headers={"x-api-key": "k"}
        ) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["error"]["message"] == "anthropic-version: header is required"
            assert resp.headers["request-id"] == body["request_id"]
        async with session.get(f"{sim.url}/v1/nothing") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["type"] == "not_found_error"
        async with session.post(
            f"{sim.url}/v1/messages",
            data=b"{not json",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as resp:
            assert resp.status == 400


async def test_streaming_yields_the_real_event_sequence(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory()).url)
    plain = await client.messages.create(model=MODEL, max_tokens=300, messages=_user("stream 1"))
    events: list[str] = []
    async with client.messages.stream(
        model=MODEL, max_tokens=300, messages=_user("stream 1")
    ) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(events)
    assert "message_delta" in events
    assert final.content[0].type == "text"
    assert plain.content[0].type == "text"
    assert final.content[0].text == plain.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.stop_reason == plain.stop_reason


async def test_count_tokens_matches_billed_input(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory()).url)
    params: dict[str, Any] = {
        "model": MODEL,
        "system": "You are terse.",
        "messages": _user("How many tokens is this sentence, roughly?"),
    }
    counted = await client.messages.count_tokens(**params)
    billed = await client.messages.create(max_tokens=20, **params)
    assert counted.input_tokens == billed.usage.input_tokens


async def test_models_list_and_retrieve(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory()).url)
    ids = [m.id async for m in client.models.list()]
    assert MODEL in ids
    assert "claude-haiku-4-5-20251001" in ids
    model = await client.models.retrieve("claude-haiku-4-5")
    assert model.id == "claude-haiku-4-5-20251001"


async def test_prompt_caching_writes_then_reads(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory(cache_min_tokens=100)).url)
    system: list[anthropic.types.TextBlockParam] = [
        {"type": "text", "text": "policy " * 200, "cache_control": {"type": "ephemeral"}}
    ]
    first = await client.messages.create(
        model=MODEL, max_tokens=20, system=system, messages=_user("q1")
    )
    second = await client.messages.create(
        model=MODEL, max_tokens=20, system=system, messages=_user("q2")
    )
    assert first.usage.cache_creation_input_tokens == 3 + 3 + 350
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == 3 + 3 + 350
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens


async def test_batches_round_trip(sim_factory: SimFactory, client_factory: ClientFactory) -> None:
    client = client_factory((await sim_factory(batch_delay_s=0.3)).url)
    batch = await client.messages.batches.create(
        requests=[
            {
                "custom_id": "first",
                "params": {"model": MODEL, "max_tokens": 50, "messages": _user("batch A")},
            },
            {
                "custom_id": "broken",
                "params": {"model": MODEL, "max_tokens": -1, "messages": _user("batch B")},
            },
        ]
    )
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 2
    listed = [b.id async for b in client.messages.batches.list()]
    assert listed == [batch.id]
    await asyncio.sleep(0.35)
    ended = await client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
    results = {r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)}
    ok = results["first"]
    assert ok.type == "succeeded"
    assert ok.message.content[0].type == "text"
    assert ok.message.content[0].text.startswith("Re: batch A")
    assert results["broken"].type == "errored"
    deleted = await client.messages.batches.delete(batch.id)
    assert deleted.id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(batch.id)


async def test_batch_cancel(sim_factory: SimFactory, client_factory: ClientFactory) -> None:
    client = client_factory((await sim_factory(batch_delay_s=60)).url)
    batch = await client.messages.batches.create(
        requests=[
            {"custom_id": "a", "params": {"model": MODEL, "max_tokens": 5, "messages": _user("a")}}
        ]
    )
    canceled = await client.messages.batches.cancel(batch.id)
    assert canceled.processing_status == "ended"
    assert canceled.request_counts.canceled == 1


async def test_reset_fault_is_a_connection_error(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory(fail_rates={"reset": 1.0})).url)
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(model=MODEL, max_tokens=5, messages=_user("x"))


async def test_timeout_fault_outlasts_the_client(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    sim = await sim_factory(fail_rates={"timeout": 1.0}, timeout_hold_s=30)
    client = client_factory(sim.url, timeout=0.5)
    with pytest.raises(anthropic.APITimeoutError):
        await client.messages.create(model=MODEL, max_tokens=5, messages=_user("x"))


async def test_stats_count_what_reached_claude_and_reset_clears(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    sim = await sim_factory(rpm=3)
    client = client_factory(sim.url, key="key-a")
    outcomes = []
    for _ in range(5):
        try:
            m = await client.messages.create(model=MODEL, max_tokens=10, messages=_user("x"))
            outcomes.append(m.usage.output_tokens)
        except anthropic.RateLimitError:
            outcomes.append(-1)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.url}/_sim/stats") as resp:
            stats = await resp.json()
        key = stats["keys"]["key-a"]
        assert key["requests"] == {"200": 3, "429": 2}
        assert key["rate_limited"] == 2
        assert key["output_tokens"] == sum(o for o in outcomes if o > 0)
        async with session.post(f"{sim.url}/_sim/reset") as resp:
            assert resp.status == 200
        async with session.get(f"{sim.url}/_sim/stats") as resp:
            assert (await resp.json())["keys"] == {}


async def test_our_client_reads_the_same_answer_the_sdk_types_do(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    from pipeline.upstream.claude import ClaudeClient

    sim = await sim_factory(output_tokens=12)
    messages = _user("request 5: compare")
    typed = await client_factory(sim.url).messages.create(
        model=MODEL, max_tokens=50, messages=messages
    )
    params = {"model": MODEL, "max_tokens": 50, "messages": messages}
    ours = ClaudeClient(sim.url, 10.0)
    try:
        got = await ours.create("sk-test", params)
    finally:
        await ours.close()
    assert typed.content[0].type == "text"
    # the same message, but for its id: the SDK's typed parse and our raw one agree
    ours_typed = anthropic.types.Message.model_validate(got.message)
    assert ours_typed.model_dump(exclude={"id"}) == typed.model_dump(exclude={"id"})
    assert (got.model, got.stop_reason) == (MODEL, "end_turn")
    assert (got.input_tokens, got.output_tokens) == (
        typed.usage.input_tokens,
        typed.usage.output_tokens,
    )
    assert got.request_id is not None
    assert got.request_id.startswith("req_")
    assert "anthropic-ratelimit-requests-remaining" in got.headers


async def test_our_client_classifies_status_errors_with_retry_after(
    sim_factory: SimFactory,
) -> None:
    from pipeline.errors import UpstreamError
    from pipeline.upstream.claude import ClaudeClient

    sim = await sim_factory(rpm=1)
    ours = ClaudeClient(sim.url, 10.0)
    params = {"model": MODEL, "max_tokens": 10, "messages": _user("x")}
    try:
        await ours.create("sk-test", params)
        with pytest.raises(UpstreamError) as info:
            await ours.create("sk-test", params)
        with pytest.raises(UpstreamError) as unknown:
            await ours.create("sk-test", {**params, "model": "claude-imaginary-9"})
    finally:
        await ours.close()
    assert (info.value.status, info.value.error_type) == (429, "rate_limit_error")
    assert info.value.retriable
    assert info.value.retry_after == 60
    assert (unknown.value.status, unknown.value.retriable) == (404, False)


@pytest.mark.parametrize("name", ["tools_auto", "parallel_tool_calls", "thinking", "tools_tool"])
async def test_streamed_tool_use_and_thinking_assemble_into_the_same_message(
    name: str, sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    params = corpus.corpus()[name]
    client = client_factory((await sim_factory()).url)
    plain = await client.messages.create(**params)
    deltas: set[str] = set()
    async with client.messages.stream(**params) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                deltas.add(event.delta.type)
        final = await stream.get_final_message()
    assert final.model_dump(exclude={"id"}) == plain.model_dump(exclude={"id"})
    kinds = {b.type for b in plain.content}
    if "tool_use" in kinds:
        assert "input_json_delta" in deltas
    if "thinking" in kinds:
        assert {"thinking_delta", "signature_delta"} <= deltas


async def test_images_documents_and_tools_count_as_they_are_billed(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory(cache_min_tokens=64)).url)
    for name in ("base64_jpeg", "pdf_document", "tools_any", "search_result", "url_image"):
        params = corpus.corpus()[name]
        counted = await client.messages.count_tokens(
            **{k: v for k, v in params.items() if k in ("model", "messages", "system", "tools")}
        )
        billed = (await client.messages.create(**params)).usage
        total = billed.input_tokens + (billed.cache_read_input_tokens or 0)
        assert counted.input_tokens == total + (billed.cache_creation_input_tokens or 0), name


async def test_a_thinking_block_passed_back_unmodified_is_accepted_and_a_modified_one_not(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    client = client_factory((await sim_factory()).url)
    params = corpus.corpus()["thinking"]
    first = await client.messages.create(**params)
    thinking = first.content[0].model_dump()
    turn = [*params["messages"], {"role": "assistant", "content": [thinking]},
            {"role": "user", "content": "and 1003?"}]  # fmt: skip
    again = await client.messages.create(**{**params, "messages": turn})
    assert again.content[0].type == "thinking"
    forged = {**thinking, "thinking": thinking["thinking"] + " (edited)"}
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        await client.messages.create(
            **{**params, "messages": [turn[0], {"role": "assistant", "content": [forged]}, turn[2]]}
        )


async def test_rate_limit_headers_say_what_was_left_when_the_request_was_admitted(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    # The first request is generated for 300 ms; two more are admitted meanwhile.
    # Its headers count only what was spent before it was admitted, as a stream's
    # must: a client that deducts what it sent since would otherwise deduct twice.
    sim = await sim_factory(rpm=60, latency_ms=300)
    client = client_factory(sim.url)

    async def remaining() -> int:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=10, messages=_user("x")
        )
        return int(raw.headers["anthropic-ratelimit-requests-remaining"])

    first = asyncio.ensure_future(remaining())
    limits = sim.simulator.limits_for("sk-test")
    # Polling the simulator's bucket until the first is admitted (no event for it).
    while limits.headers()["anthropic-ratelimit-requests-remaining"] == "60":  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    later = await asyncio.gather(remaining(), remaining())
    assert await first == 59
    assert sorted(later) == [57, 58]


@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_a_large_body_is_judged_in_the_helper_as_a_small_one_is_on_the_loop(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    # Bodies over HEAVY_BODY_BYTES are parsed, validated and counted in a helper
    # process (a ten-thousand-message request stalled the simulator's loop for
    # everyone): the answers must be the ones the loop gives a small body.
    import multiprocessing

    from pipeline.dev.sim.heavy import HEAVY_BODY_BYTES
    from pipeline.limits import tokens

    sim = await sim_factory()
    client = client_factory(sim.url, key="key-heavy")
    pad = "lorem ipsum dolor " * 8
    assert not multiprocessing.active_children()

    long_text = "word " * (HEAVY_BODY_BYTES // 4)  # about 330 KB: heavy, within the window
    message = await client.messages.create(model=MODEL, max_tokens=10, messages=_user(long_text))
    assert message.usage.input_tokens == tokens.count_request(_user(long_text))
    assert multiprocessing.active_children()  # the helper read it

    too_long = [{"role": "user", "content": pad}] * 10_000  # 1.8 MB
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long: 400003 tokens"):
        await client.messages.create(model=MODEL, max_tokens=10, messages=too_long)  # type: ignore[arg-type]

    for content in (pad * 2000, pad):  # heavy and light: the same refusal
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "assistant", "content": content}]
            )
        assert 'first message must use the "user" role' in str(info.value)

    async with aiohttp.ClientSession() as session:
        for body in (b"{" + b" " * (HEAVY_BODY_BYTES + 1), b"{"):  # heavy and light
            async with session.post(
                f"{sim.url}/v1/messages",
                data=body,
                headers={"x-api-key": "key-heavy", "anthropic-version": "2023-06-01"},
            ) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["message"] == "Request body is not valid JSON"
        async with session.get(f"{sim.url}/_sim/stats") as resp:
            stats = await resp.json()
    assert stats["keys"]["key-heavy"]["requests"] == {"200": 1, "400": 5}
