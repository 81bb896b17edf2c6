"""Fetched record batches' CRCs, checked with hardware CRC-32C that holds no GIL.

aiokafka checks each batch's CRC in software while holding the GIL: 10 ms for a
10 MB batch, in Faust's consumer thread, during which every partner's records and
the worker's event loop wait. `google_crc32c` uses the CPU's CRC instruction and
releases the GIL: 1.7 ms for 10 MB (a large batch is checked without copying it
out: `_covered_crc`). The worker checks every fetch response here
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
            ok = _covered_crc(data, view, start, end) == crc
        if not ok:
            return base
    return None


def _covered_crc(data: bytes, view: memoryview, start: int, end: int) -> int:
    """The CRC-32C of a v2 batch's covered bytes. `google_crc32c` takes only
    `bytes`, so a slice is a copy; a large batch that ends where the data ends
    (a heavy partner's: one batch a fetch) is checked without one, from the CRC of
    all of `data` and of the bytes before its coverage (`_tail_crc`). Measured in
    the worker: 6-9 ms of CPU per 10 MB batch with the copy, most of it holding
    the GIL."""
    head = start + _CRC_FROM
    if end == len(data) and end - head >= COPY_FREE_BYTES and isinstance(data, bytes):
        whole, before = google_crc32c.value(data), google_crc32c.value(bytes(view[:head]))
        return _tail_crc(whole, before, end - head)
    return int(google_crc32c.value(bytes(view[head:end])))


#: Below this, copying a batch out costs less than the arithmetic that avoids it.
COPY_FREE_BYTES = 64 * 1024

# CRC-32C arithmetic in zlib's way (crc32_combine), over the reflected polynomial:
# a CRC without its pre- and post-conditioning is linear, so for data A then B,
# crc(A + B) = crc(A) * x^(8 len(B)) + crc(B), all mod the polynomial.
_POLY = 0x82F63B78


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) mod the polynomial, in reflected bit order."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    """x^(2^k) mod the polynomial, for k in 0..31."""
    power = [1 << 30]  # x^1
    for _ in range(31):
        power.append(_multmodp(power[-1], power[-1]))
    return power


_X2N = _powers()


def _x8n(n: int) -> int:
    """x^(8 n) mod the polynomial: n zero bytes run through a CRC."""
    product, k = 1 << 31, 3  # x^0; bit i of n stands for x^(2^(i+3))
    while n:
        if n & 1:
            product = _multmodp(_X2N[k & 31], product)
        n >>= 1
        k += 1
    return product


def _tail_crc(whole: int, before: int, tail_len: int) -> int:
    """crc(B) from crc(A + B) and crc(A), where B is `tail_len` bytes long."""
    return whole ^ _multmodp(_x8n(tail_len), before)


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
