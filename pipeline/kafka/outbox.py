"""The state log's writer: one producer, every write in the order it was made,
and, on a broker with transactions, each batch of writes one transaction.

A batch is whatever queued while the last one was being sent (up to
`MAX_BATCH` writes): one transaction per batch, not per request, so a busy
worker pays one commit for many requests. A group made with `together` (a
request's response, usage record and done marker) is never split between
batches: its records are visible together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.errors import BrokerError
from pipeline.records import OutMessage

log = logging.getLogger("pipeline.kafka.statelog")

#: The most writes one transaction carries (it carries whatever queued meanwhile).
MAX_BATCH = 1000

#: A record to send: topic, key, value, partition (None: by key), headers, done.
Headers = list[tuple[str, bytes]]
Write = tuple[str, bytes | None, bytes | None, int | None, Headers, "asyncio.Future[None]"]


class Outbox:
    def __init__(self, transactional: bool) -> None:
        self.transactional = transactional
        self._queue: asyncio.Queue[list[Write]] = asyncio.Queue()
        self._group: list[Write] | None = None

    def put(self, write: Write) -> None:
        if self._group is not None:
            self._group.append(write)
        else:
            self._queue.put_nowait([write])

    def send(self, messages: Iterable[OutMessage]) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futures = []
        for m in messages:
            done: asyncio.Future[None] = loop.create_future()
            self.put((m.topic, m.key, m.value, None, list(m.headers), done))
            futures.append(done)
        return futures

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        if self._group is not None:  # already inside one
            yield
            return
        self._group = []
        try:
            yield
        finally:
            group, self._group = self._group, None
            if group:
                self._queue.put_nowait(group)

    async def join(self) -> None:
        """Until every write queued so far has been sent."""
        await self._queue.join()

    async def run(self, producer: Any) -> None:
        """Send forever (the state log's writer task)."""
        while True:
            groups = [await self._queue.get()]
            size = len(groups[0])
            while size < MAX_BATCH and not self._queue.empty():
                groups.append(self._queue.get_nowait())
                size += len(groups[-1])
            writes = [write for group in groups for write in group]
            try:
                if self.transactional:
                    await _commit(producer, writes)
                else:
                    await _send(producer, writes)
            finally:
                for _ in groups:
                    self._queue.task_done()


async def _send(producer: Any, writes: list[Write]) -> None:
    for topic, key, value, partition, headers, done in writes:
        try:
            ack = producer.send_nowait(
                topic, value=value, key=key, partition=partition, headers=headers
            )
        except Exception as exc:  # the writer's caller decides
            if not done.done():
                done.set_exception(exc)
            continue
        ack.add_done_callback(lambda fut, done=done: _settle(fut, done))


async def _commit(producer: Any, writes: list[Write]) -> None:
    """One transaction: every write queued, then committed (librdkafka's commit
    flushes them and fails if any was not delivered; the producer aborts only
    once every record is answered); else aborted and every write failed (a
    producer that cannot even abort, say fenced, stops the worker: the
    exception ends the writer task)."""
    try:
        await producer.begin_transaction()
        for topic, key, value, partition, headers, _ in writes:
            producer.produce(topic, value, key, partition, headers)
        await producer.commit_transaction()
    except Exception as exc:
        for *_, done in writes:
            if not done.done():
                done.set_exception(exc)
        log.warning("a state log transaction failed: aborting it", exc_info=exc)
        try:
            await producer.abort_transaction()
        except Exception as abort_exc:
            raise BrokerError(
                f"cannot abort a failed state log transaction ({exc}): {abort_exc}; "
                "stopping: what it held is served again by the next owner"
            ) from abort_exc
        return
    for *_, done in writes:
        if not done.done():
            done.set_result(None)


def _settle(ack: asyncio.Future[Any], done: asyncio.Future[None]) -> None:
    if done.done():
        return
    if ack.cancelled():
        done.cancel()
    elif ack.exception() is not None:
        done.set_exception(ack.exception())  # type: ignore[arg-type]
    else:
        done.set_result(None)
