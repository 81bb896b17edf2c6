"""The only module that talks to the Anthropic SDK.

One `AsyncAnthropic` per API key, on the SDK's aiohttp transport (measured here
2.5x faster than its default httpx one), with the SDK's own retries off: the
pipeline has exactly one retry policy, its own. Every failure becomes an
`UpstreamError` that says whether trying again can help and how long Claude
asked us to wait.

A call goes through the SDK's documented way to make a request by hand
(`client.post(path, cast_to=httpx.Response, body=...)`): the SDK's
authentication, headers, base URL, transport and error classes, without its
typed request transform and response models, which the pipeline would only
turn back into plain values for Avro. Measured against the simulator (3,000
calls, 64 concurrent): 0.66-0.69 CPU ms per call instead of 0.87-0.88.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic
    from anthropic import AsyncAnthropic

from pipeline import messages
from pipeline.errors import NotSent, UpstreamError

log = logging.getLogger("pipeline.upstream.claude")

#: Statuses the SDK itself would retry; we retry the same ones.
RETRIABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class UpstreamResult:
    """Claude's answer: the whole message (for the response record) and the numbers
    the pipeline accounts with (limits, budgets, cost)."""

    model: str
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    request_id: str | None
    message: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    status: int = 200
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0
    #: Answered in a Message Batch: its tokens cost half.
    batch: bool = False
    #: Answered from the response cache: Claude was not called.
    cached: bool = False


def parse_retry_after(
    headers: Mapping[str, str], now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `retry-after` as seconds or as an
    HTTP date (RFC 9110 allows both; a date in the past means now)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                value = max(0.0, parsedate_to_datetime(raw).timestamp() - now())
            except (TypeError, ValueError, IndexError):
                continue
        if value >= 0:
            return value
    return None


def sdk() -> ModuleType:
    """The anthropic SDK, imported on first use.

    Importing it costs about 1.4 s of CPU (its types package is large); a worker
    starts importing it in a thread (`preload`) while it waits for the broker.
    """
    import anthropic

    return anthropic


def preload() -> threading.Thread:
    """Import the SDK and its HTTP stack in the background; `sdk()` then finds it."""

    def load() -> None:
        import anthropic
        import anthropic.lib.streaming  # noqa: F401

    thread = threading.Thread(target=load, name="import-anthropic", daemon=True)
    thread.start()
    return thread


def classify(exc: anthropic.APIError) -> UpstreamError:
    """Turn one of the SDK's errors into our error model. (Any other exception is
    not Claude's: it is a bug of ours, and the caller's error policy treats it so.)"""
    anthropic = sdk()
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamError("Claude did not answer in time", error_class="timeout", retriable=True)
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamError(
            "connection to Claude failed", error_class="connection", retriable=True
        )
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        headers = {k.lower(): v for k, v in exc.response.headers.items()}
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        error_type = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        retriable = status >= 500 or status in RETRIABLE_STATUSES
        return UpstreamError(
            f"Claude returned {status}: {message or exc.message}",
            error_class="5xx" if status >= 500 else "4xx",
            status=status,
            error_type=str(error_type) if error_type else None,
            retry_after=parse_retry_after(headers),
            retriable=retriable,
            headers=headers,
        )
    return UpstreamError(
        f"Claude's answer could not be used: {type(exc).__name__}",
        error_class="5xx",
        status=502,
        retriable=True,
    )


def _is_transport_failure(cause: BaseException | None) -> bool:
    """Whether what the SDK reports as a connection error is the network's doing."""
    import aiohttp
    import httpx2

    return cause is None or isinstance(
        cause, httpx2.TransportError | aiohttp.ClientError | OSError | TimeoutError
    )


def request_headers(betas: Sequence[str] | None, workspace_id: str | None) -> dict[str, str]:
    """The headers of one request beyond the SDK's own: the betas it names (intake
    checked each against the partner's) and the partner's Workspace."""
    headers = {}
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    if workspace_id:
        headers["anthropic-workspace-id"] = workspace_id
    return headers


def to_result(message: Mapping[str, Any], headers: Mapping[str, str]) -> UpstreamResult:
    """Our result from a Messages API response body (a JSON object)."""
    if not isinstance(message, Mapping) or not isinstance(message.get("usage"), Mapping):
        raise UpstreamError(
            "Claude's answer is not a message", error_class="5xx", status=502, retriable=True
        )
    usage = message["usage"]
    cache_creation = usage.get("cache_creation")
    one_hour = (
        cache_creation.get("ephemeral_1h_input_tokens")
        if isinstance(cache_creation, Mapping)
        else 0
    )
    server = usage.get("server_tool_use")
    searches = server.get("web_search_requests") if isinstance(server, Mapping) else 0
    return UpstreamResult(
        model=str(message.get("model", "")),
        stop_reason=message.get("stop_reason"),
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cache_read_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
        cache_creation_input_tokens=int(usage.get("cache_creation_input_tokens") or 0),
        cache_creation_1h_input_tokens=int(one_hour or 0),
        web_search_requests=int(searches or 0),
        request_id=headers.get("request-id"),
        message=message,
        headers=headers,
    )


class ClaudeClient:
    """Calls Claude; one SDK client per API key, made by `prepare` (or on first use)."""

    def __init__(self, base_url: str | None, timeout_s: float) -> None:
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._clients: dict[str, AsyncAnthropic] = {}

    def _client(self, api_key: str) -> AsyncAnthropic:
        client = self._clients.get(api_key)
        if client is None:
            client = self._clients[api_key] = self._new_client(api_key)
        return client

    def _new_client(self, api_key: str) -> AsyncAnthropic:
        anthropic = sdk()
        client: AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=self._base_url,
            max_retries=0,
            # An explicit timeout also lifts the SDK's refusal of large
            # non-streaming max_tokens: our deadline handling owns that.
            timeout=self._timeout_s,
            http_client=anthropic.DefaultAioHttpClient(timeout=self._timeout_s),
        )
        return client

    async def prepare(self, api_key: str) -> None:
        """Create `api_key`'s SDK client in a thread, before its first request. A
        client loads the CA bundle (30 ms) and the first one imports the SDK's HTTP
        stack (75 ms more): made at a key's first request, that held the event
        loop, and every partner's records behind it."""
        if api_key in self._clients:
            return
        client = await asyncio.to_thread(self._new_client, api_key)
        if self._clients.setdefault(api_key, client) is not client:
            await client.close()  # a request made one meanwhile

    async def create(
        self,
        api_key: str,
        params: Mapping[str, Any],
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResult:
        """One Messages API call. The body is serialized here, not by the SDK (whose
        deep copy and encoding of a large request held the event loop for 100 ms
        and more), or comes already encoded (`body`: a heavy request's, encoded by
        the examiner process)."""
        import httpx2

        anthropic = sdk()
        try:
            content = body if body is not None else messages.json_body(params)
        except Exception as exc:
            raise NotSent(f"the request body could not be encoded: {type(exc).__name__}") from exc
        try:
            response = await self._client(api_key).post(
                "/v1/messages",
                cast_to=httpx2.Response,
                content=content,
                options={"headers": dict(headers)} if headers else {},
            )
        except anthropic.APIConnectionError as exc:
            if not _is_transport_failure(exc.__cause__):
                # The SDK wraps whatever its transport raised: not every one is the network.
                raise exc.__cause__ or exc from exc
            raise classify(exc) from exc
        except anthropic.APIError as exc:  # the SDK's errors are Claude's (or the network's)
            raise classify(exc) from exc
        try:
            message = json.loads(response.content)
        except ValueError as exc:  # a gateway in between answered with something else
            raise UpstreamError(
                "Claude's answer is not JSON", error_class="5xx", status=502, retriable=True
            ) from exc
        headers = {k.lower(): v for k, v in response.headers.items()}
        return to_result(message, headers)

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
