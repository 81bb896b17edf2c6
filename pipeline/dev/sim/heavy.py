"""Large request bodies are parsed, validated and counted in a helper process.

The simulator is one process with one event loop, and a request of ten thousand
messages (1.8 MB of JSON) took it about 40 ms to parse, validate and count (11
and 27 ms here), during which every other key's requests waited: in the poison
benchmark the good traffic's upstream p99 went from 57 to 100-114 ms. Claude
does not slow one caller down for another's large request, so a body over
`HEAVY_BODY_BYTES` is read here, in a process of its own, and only the verdict
comes back: the validated request and its input tokens, or the refusal. What
follows (faults, rate limits, the prompt cache, generation) is the same as for
any request, in the same order, on the simulator's loop.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from pipeline.dev.sim.errors import ApiError
from pipeline.dev.sim.validate import MessagesRequest, validate_messages
from pipeline.lifecycle.helperproc import HelperProcess
from pipeline.limits import tokens

log = logging.getLogger("pipeline.dev.sim")

#: Bodies above this size are read in the helper process.
HEAVY_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Checked:
    """A body that passed validation: the request and its input tokens."""

    request: MessagesRequest
    input_tokens: int


#: (status, error type, message): a refusal, as the helper sends it back.
Refusal = tuple[int, str, str]


def check(raw: bytes, betas: tuple[str, ...] = ()) -> Checked | Refusal:
    """Parse, validate and count one Messages body (run in the helper process);
    `betas`: what its `anthropic-beta` header names."""
    try:
        body = json.loads(raw)
    except ValueError:
        return (400, "invalid_request_error", "Request body is not valid JSON")
    try:
        req = validate_messages(body, betas)
    except ApiError as exc:
        return (exc.status, exc.error_type, exc.message)
    return Checked(req, tokens.count_request(req.messages, req.system, req.tools))


class HeavyBodies:
    """The helper process (`pipeline.lifecycle.helperproc`), started with the first large
    body, stopped with the server."""

    def __init__(self) -> None:
        self._helper = HelperProcess()

    async def start(self) -> None:
        """Start the helper now rather than with the first large body."""
        await self._helper.start()

    async def check(self, raw: bytes, betas: tuple[str, ...] = ()) -> Checked | None:
        """The verdict on `raw`, read in the helper: the checked request, ApiError
        for a refusal, or None if the helper died under it (read it on the loop)."""
        try:
            got = await self._helper.run(check, raw, betas)
        except BrokenProcessPool:
            log.exception("the helper reading large bodies died", extra={"bytes": len(raw)})
            return None
        if isinstance(got, Checked):
            return got
        raise ApiError(*got)

    def close(self) -> None:
        self._helper.close()
