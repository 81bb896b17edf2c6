"""The Message Batches API, through the same SDK clients as every Messages call.

Create, retrieve, list and read results, as plain JSON values (the batch lane
stores what it reads in the state log). Errors become `UpstreamError` as in
`claude.py`; the lane decides what to do with them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pipeline.errors import UpstreamError
from pipeline.upstream.claude import classify, sdk

#: Only JSON goes to and comes from these endpoints.
_JSON = {"content-type": "application/json"}


class SdkClients(Protocol):
    def _client(self, api_key: str) -> Any: ...


class BatchApi:
    """`POST /v1/messages/batches`, `GET .../{id}`, `GET ...?after_id`, results."""

    def __init__(self, clients: SdkClients) -> None:
        self._clients = clients

    async def _call(self, api_key: str, method: str, path: str, body: bytes | None = None) -> bytes:
        import httpx2

        anthropic = sdk()
        client = self._clients._client(api_key)
        try:
            if method == "POST":
                response = await client.post(
                    path, cast_to=httpx2.Response, content=body, options={"headers": _JSON}
                )
            else:
                response = await client.get(path, cast_to=httpx2.Response)
        except anthropic.APIError as exc:
            raise classify(exc) from exc
        content: bytes = response.content
        return content

    async def _object(
        self, api_key: str, method: str, path: str, body: bytes | None = None
    ) -> dict[str, Any]:
        raw = await self._call(api_key, method, path, body)
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError(
                "the Batches API's answer is not JSON",
                error_class="5xx",
                status=502,
                retriable=True,
            ) from exc
        if not isinstance(value, dict):
            raise UpstreamError(
                "the Batches API's answer is not an object",
                error_class="5xx",
                status=502,
                retriable=True,
            )
        return value

    async def create(self, api_key: str, requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Submit `requests` ({custom_id, params}); the new batch object."""
        body = json.dumps({"requests": list(requests)}, separators=(",", ":")).encode()
        return await self._object(api_key, "POST", "/v1/messages/batches", body)

    async def retrieve(self, api_key: str, batch_id: str) -> dict[str, Any]:
        return await self._object(api_key, "GET", f"/v1/messages/batches/{batch_id}")

    async def created_since(self, api_key: str, since_ms: int) -> list[dict[str, Any]]:
        """The key's batches created at or after `since_ms` (newest first, as listed)."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            query = "?limit=100" + (f"&after_id={after}" if after else "")
            page = await self._object(api_key, "GET", "/v1/messages/batches" + query)
            data = page.get("data") or []
            for batch in data:
                if created_ms(batch) < since_ms:
                    return found
                found.append(batch)
            if not page.get("has_more") or not data:
                return found
            after = str(data[-1]["id"])

    async def results(self, api_key: str, batch_id: str) -> list[dict[str, Any]]:
        """An ended batch's results, one object per request ({custom_id, result})."""
        raw = await self._call(api_key, "GET", f"/v1/messages/batches/{batch_id}/results")
        out = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise UpstreamError(
                    "a batch result line is not JSON", error_class="5xx", status=502, retriable=True
                ) from exc
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                out.append(item)
        return out


def created_ms(batch: Mapping[str, Any]) -> int:
    """A batch object's `created_at` (RFC 3339) in unix milliseconds (0 if unreadable)."""
    from datetime import datetime

    raw = batch.get("created_at")
    if not isinstance(raw, str):
        return 0
    try:
        return int(datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0
