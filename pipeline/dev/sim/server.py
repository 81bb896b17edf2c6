"""HTTP front of the simulator (aiohttp): routes, envelopes, streaming, faults."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Self

from aiohttp import web

from pipeline.dev.sim.config import SimConfig
from pipeline.dev.sim.engine import (
    Prepared,
    Simulator,
    message_object,
    model_object,
    models_page,
    usage_dict,
)
from pipeline.dev.sim.errors import ApiError, invalid
from pipeline.dev.sim.heavy import HEAVY_BODY_BYTES, HeavyBodies

log = logging.getLogger("pipeline.dev.sim")

SIM_KEY: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)
HEAVY_KEY: web.AppKey[HeavyBodies] = web.AppKey("heavy_bodies", HeavyBodies)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(data: object, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(
        body=_dumps(data).encode(), status=status, headers=headers, content_type=_JSON
    )


def _error(exc: ApiError, request_id: str) -> web.Response:
    envelope = {
        "type": "error",
        "error": {"type": exc.error_type, "message": exc.message},
        "request_id": request_id,
    }
    headers = {**exc.headers, "request-id": request_id}
    if exc.status in (429, 500, 529):
        headers.setdefault("x-should-retry", "true")
    return _json(envelope, headers, exc.status)


def api(handler: Callable[[Simulator, web.Request, str], Awaitable[web.StreamResponse]]) -> Handler:
    """Give every response a request-id and turn ApiError into Anthropic's envelope."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        sim = request.app[SIM_KEY]
        request_id = sim.new_id("req")
        try:
            return await handler(sim, request, request_id)
        except ApiError as exc:
            return _error(exc, request_id)

    return wrapped


async def _body(sim: Simulator, request: web.Request, key: str) -> object:
    return _parsed(sim, await _raw_body(sim, request, key), key)


def _parsed(sim: Simulator, raw: bytes, key: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        sim.record(key, 400)
        raise invalid("Request body is not valid JSON") from None


async def _raw_body(sim: Simulator, request: web.Request, key: str) -> bytes:
    limit = sim.config.max_body_bytes
    too_large = request.content_length is not None and request.content_length > limit
    if not too_large:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            too_large = True
    if too_large:
        # Drain before answering: a client still sending would otherwise see a
        # broken pipe instead of the 413 (the real API's edge reads it all too).
        while await request.content.readany():
            pass
        sim.record(key, 413)
        raise ApiError(
            413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
        )
    return raw


def _reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset, as a crashing proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _transport_fault(sim: Simulator, prepared: Prepared, request: web.Request) -> None:
    sim.record(prepared.key, prepared.fault or "fault")
    if prepared.fault == "timeout":
        await asyncio.sleep(sim.config.timeout_hold_s)
    _reset_connection(request)
    # Nothing may be written on a dropped connection: end the handler here.
    raise asyncio.CancelledError


def _betas(request: web.Request) -> tuple[str, ...]:
    """The betas the `anthropic-beta` header names (comma-separated, maybe repeated)."""
    names = ",".join(request.headers.getall("anthropic-beta", ()))
    return tuple(b.strip() for b in names.split(",") if b.strip())


#: Request headers an exchange keeps: what selects how Claude runs a request.
_RECORDED_HEADERS = ("anthropic-beta", "anthropic-workspace-id", "anthropic-version")


@api
async def messages(sim: Simulator, request: web.Request, request_id: str) -> web.StreamResponse:
    key = sim.authenticate(request.headers)
    raw = await _raw_body(sim, request, key)
    betas = _betas(request)
    body: object = None
    checked = None
    if len(raw) > HEAVY_BODY_BYTES:
        try:
            checked = await request.app[HEAVY_KEY].check(raw, betas)
        except ApiError as exc:
            sim.record(key, exc.status)
            raise
    if checked is None:
        body = _parsed(sim, raw, key)
    prepared = sim.prepare(key, body, checked, betas)
    if prepared.fault is not None:
        await _transport_fault(sim, prepared, request)
    if prepared.request.stream:
        return await _stream(sim, request, request_id, prepared)
    # The rate-limit headers say what was left when the request was admitted, as
    # a stream's must (they go out before its first token): requests admitted
    # while this one is generated are not in them.
    headers = sim.ratelimit_headers(key)
    if prepared.delay_s > 0:
        await asyncio.sleep(prepared.delay_s)
    message = sim.complete(prepared, sim.new_id("msg"))
    if sim.config.record_exchanges > 0:
        seen = {h: request.headers[h] for h in _RECORDED_HEADERS if h in request.headers}
        sim.remember(request_id, _parsed(sim, raw, key) if body is None else body, message, seen)
    headers["request-id"] = request_id
    return _json(message, headers)


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


async def _stream(
    sim: Simulator, request: web.Request, request_id: str, prepared: Prepared
) -> web.StreamResponse:
    """The real event sequence: message_start, then per block content_block_start,
    its deltas (text_delta; thinking_delta then signature_delta; input_json_delta)
    and content_block_stop, then message_delta and message_stop."""
    cfg = sim.config
    headers = sim.ratelimit_headers(prepared.key)
    headers["request-id"] = request_id
    headers["content-type"] = "text/event-stream"
    headers["cache-control"] = "no-cache"
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    if cfg.latency_ms > 0:
        await asyncio.sleep(cfg.latency_ms / 1000.0)
    usage = usage_dict(prepared)
    start = message_object(prepared, sim.new_id("msg"), {**usage, "output_tokens": 1})
    start.update(content=[], stop_reason=None, stop_sequence=None)
    await response.write(_sse("message_start", {"type": "message_start", "message": start}))
    reply = prepared.reply
    limits = sim.limits_for(prepared.key)
    charged = 0
    for index, block in enumerate(reply.blocks):
        tokens = reply.block_tokens[index] if index < len(reply.block_tokens) else 0
        for event in _block_events(index, block):
            if event[0] == "content_block_delta" and cfg.ms_per_output_token > 0:
                await asyncio.sleep(cfg.ms_per_output_token * _DELTA_TOKENS / 1000.0)
            await response.write(_sse(*event))
            if index == 0 and event[0] == "content_block_start":
                await response.write(_sse("ping", {"type": "ping"}))
        limits.charge_output(tokens)
        charged += tokens
    # what the blocks did not cover (a withheld stop sequence)
    limits.charge_output(max(0, reply.output_tokens - charged))
    sim.record(prepared.key, 200, usage)
    await response.write(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
    )
    await response.write(_sse("message_stop", {"type": "message_stop"}))
    await response.write_eof()
    return response


#: Output tokens per streamed delta (pacing of `--ms-per-output-token`).
_DELTA_TOKENS = 4


def _chunks(text: str, words: int = _DELTA_TOKENS) -> list[str]:
    parts = text.split(" ")
    return [
        " ".join(parts[i : i + words]) + (" " if i + words < len(parts) else "")
        for i in range(0, len(parts), words)
    ]


def _block_events(index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    def delta(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}

    def begin(shell: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_start", {
            "type": "content_block_start",
            "index": index,
            "content_block": shell,
        }

    kind = block["type"]
    events: list[tuple[str, dict[str, Any]]] = []
    if kind == "text":
        events.append(begin({"type": "text", "text": ""}))
        events.extend(delta({"type": "text_delta", "text": c}) for c in _chunks(block["text"]))
    elif kind == "thinking":
        events.append(begin({"type": "thinking", "thinking": "", "signature": ""}))
        events.extend(
            delta({"type": "thinking_delta", "thinking": c}) for c in _chunks(block["thinking"])
        )
        events.append(delta({"type": "signature_delta", "signature": block["signature"]}))
    elif kind == "tool_use":
        events.append(begin({**block, "input": {}}))
        text = _dumps(block["input"])
        step = 16
        events.extend(
            delta({"type": "input_json_delta", "partial_json": text[i : i + step]})
            for i in range(0, len(text), step)
        )
    else:  # redacted_thinking and anything else arrives whole
        events.append(begin(dict(block)))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


@api
async def count_tokens(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    body = await _body(sim, request, key)
    return _json(sim.count_tokens(key, body, _betas(request)), {"request-id": request_id})


@api
async def list_models(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    sim.authenticate(request.headers)
    return _json(models_page(), {"request-id": request_id})


@api
async def get_model(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    sim.authenticate(request.headers)
    return _json(model_object(request.match_info["model_id"]), {"request-id": request_id})


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


@api
async def create_batch(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    batch = sim.batches.create(key, await _body(sim, request, key))
    return _json(sim.batches.to_object(batch, _base_url(request)), {"request-id": request_id})


@api
async def get_batch(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    batch = sim.batches.get(key, request.match_info["batch_id"])
    return _json(sim.batches.to_object(batch, _base_url(request)), {"request-id": request_id})


@api
async def list_batches(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    q = request.query
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        raise invalid("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise invalid("limit: Input should be between 1 and 1000")
    page = sim.batches.list(key, limit, q.get("after_id"), q.get("before_id"))
    base = _base_url(request)
    for item in page["data"]:
        if item["processing_status"] == "ended":
            item["results_url"] = f"{base}/v1/messages/batches/{item['id']}/results"
    return _json(page, {"request-id": request_id})


@api
async def cancel_batch(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    batch = sim.batches.cancel(key, request.match_info["batch_id"])
    return _json(sim.batches.to_object(batch, _base_url(request)), {"request-id": request_id})


@api
async def delete_batch(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    return _json(
        sim.batches.delete(key, request.match_info["batch_id"]), {"request-id": request_id}
    )


@api
async def batch_results(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    key = sim.authenticate(request.headers)
    body = sim.batches.results_jsonl(key, request.match_info["batch_id"])
    return web.Response(
        body=body,
        headers={"request-id": request_id},
        content_type="application/binary",
    )


async def sim_stats(request: web.Request) -> web.Response:
    return _json(request.app[SIM_KEY].stats_snapshot(), {})


async def sim_exchanges(request: web.Request) -> web.Response:
    return _json(list(request.app[SIM_KEY].exchanges), {})


async def sim_faults(request: web.Request) -> web.Response:
    """{"529": 1.0, ...}: the fault rates every key suffers from now on ({} for none)."""
    try:
        rates = await request.json()
    except ValueError:
        rates = None
    if not isinstance(rates, dict):
        return _json({"error": "expected a JSON object of fault kind -> probability"}, {}, 400)
    try:
        request.app[SIM_KEY].set_faults(rates)
    except ValueError as exc:
        return _json({"error": str(exc)}, {}, 400)
    return _json({"faults": rates}, {})


async def sim_reset(request: web.Request) -> web.Response:
    request.app[SIM_KEY].reset()
    return _json({"reset": True}, {})


async def sim_health(request: web.Request) -> web.Response:
    return _json({"ok": True}, {})


@api
async def not_found(sim: Simulator, request: web.Request, request_id: str) -> web.Response:
    raise ApiError(404, "not_found_error", f"Not found: {request.method} {request.path}")


def create_sim_app(config: SimConfig, simulator: Simulator | None = None) -> web.Application:
    sim = simulator or Simulator(config)
    app = web.Application(client_max_size=config.max_body_bytes + 1)
    app[SIM_KEY] = sim
    heavy = app[HEAVY_KEY] = HeavyBodies()

    async def stop_helper(_app: web.Application) -> None:
        heavy.close()

    app.on_cleanup.append(stop_helper)
    r = app.router
    r.add_post("/v1/messages", messages)
    r.add_post("/v1/messages/count_tokens", count_tokens)
    r.add_post("/v1/messages/batches", create_batch)
    r.add_get("/v1/messages/batches", list_batches)
    r.add_get("/v1/messages/batches/{batch_id}", get_batch)
    r.add_delete("/v1/messages/batches/{batch_id}", delete_batch)
    r.add_post("/v1/messages/batches/{batch_id}/cancel", cancel_batch)
    r.add_get("/v1/messages/batches/{batch_id}/results", batch_results)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model_id}", get_model)
    r.add_get("/_sim/stats", sim_stats)
    r.add_post("/_sim/reset", sim_reset)
    r.add_post("/_sim/faults", sim_faults)
    r.add_get("/_sim/exchanges", sim_exchanges)
    r.add_get("/_sim/health", sim_health)
    r.add_route("*", "/{tail:.*}", not_found)
    return app


class SimServer:
    """The simulator on a TCP port: `async with SimServer(cfg) as s: s.url`."""

    def __init__(
        self, config: SimConfig, host: str = "127.0.0.1", port: int = 0, warm: bool = False
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        #: Start the helper that reads large bodies before listening (the
        #: simulator process does; tests' in-process servers start it when used).
        self.warm = warm
        self.simulator = Simulator(config)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = create_sim_app(self.config, self.simulator)
        if self.warm:
            await app[HEAVY_KEY].start()
        # handler_cancellation: a client that gives up (a timeout fault) frees its handler.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        # Bind the socket ourselves so port 0 (any free port) tells us what it got.
        sock = socket.create_server((self.host, self.port), backlog=4096, reuse_port=False)
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        log.info("simulator listening", extra={"url": self.url})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
