"""Fetched record batches' CRCs, checked with hardware CRC-32C that holds no GIL.

aiokafka checks each batch's CRC in software while holding the GIL: 10 ms for a
10 MB batch, in Faust's consumer thread, during which every partner's records and
the worker's event loop wait. `google_crc32c` uses the CPU's CRC instruction and
releases the GIL: 1.7 ms for 10 MB, plus 1.5-2 ms to copy the checked bytes out
(its API takes `bytes`, not a view). The worker checks every fetch response here
(`faustadapter.fetch_heavy_apart`) and turns aiokafka's own check off; where only
`google_crc32c`'s pure-Python fallback is installed, aiokafka keeps checking.

A v2 batch (the format of Kafka 0.11 and later) is: base offset (8 bytes), batch
length (4), partition leader epoch (4), magic (1), CRC (4), then the attributes
and the records, which the CRC covers. A fetch response may end with part of a
batch; that part is not checked here and never delivered (aiokafka drops it).
The v0/v1 formats of older brokers carry a CRC-32 (zlib's) from the magic byte on.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import google_crc32c
from aiokafka.errors import CorruptRecordException

#: Whether the hardware CRC is installed (else aiokafka keeps its own check).
FAST = google_crc32c.implementation == "c"

_HEAD = struct.Struct(">qiibI")  # base offset, batch length, leader epoch, magic, crc
_LOG_OVERHEAD = 12  # base offset and batch length: the batch length counts the rest
_CRC_FROM = _HEAD.size  # the attributes, where the CRC's coverage starts
_LEGACY_CRC_FROM = 16  # a v0/v1 message's magic byte


def corrupt_offset(data: bytes) -> int | None:
    """The base offset of the first batch in `data` whose CRC does not match, or
    None when every whole batch is intact."""
    view = memoryview(data)
    for start, end, base, magic, crc in _batches(view):
        if end < start + _HEAD.size:  # a length shorter than a batch's header
            return base
        if magic < 2:  # a v0/v1 message: CRC-32 of the rest from its magic byte
            ok = zlib.crc32(view[start + _LEGACY_CRC_FROM : end]) == crc
        else:
            ok = google_crc32c.value(bytes(view[start + _CRC_FROM : end])) == crc
        if not ok:
            return base
    return None


def _batches(view: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(start, end, base offset, magic, crc) of each whole batch in `view` (a v0/v1
    message's CRC sits where a v2 batch has its leader epoch)."""
    start = 0
    while start + _HEAD.size <= len(view):
        base, length, epoch, magic, crc = _HEAD.unpack_from(view, start)
        end = start + _LOG_OVERHEAD + length
        if end > len(view):
            return  # a partial batch at the end of a fetch: not delivered
        yield start, end, base, magic, (crc if magic >= 2 else epoch & 0xFFFFFFFF)
        if end < start + _HEAD.size:
            return  # corrupt: no next batch to find
        start = end


def check_fetched(response: Any) -> None:
    """Raise CorruptRecordException, naming the topic, partition and offset, if a
    batch in a fetch response (aiokafka's `FetchResponse`) fails its CRC. aiokafka
    then logs the error and fetches the same offsets again after its retry
    backoff: nothing of a corrupt response is delivered."""
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *part_data in partitions:
            data = part_data[-1] if part_data else None
            if error_code or not data:
                continue
            offset = corrupt_offset(data)
            if offset is not None:
                raise CorruptRecordException(
                    f"invalid CRC in {topic}[{partition}], the batch at offset {offset}"
                )
