"""Fetched batches' CRCs, checked as aiokafka checks them: every whole batch, in
the v2 format and the v0/v1 formats, a corrupt one named by its offset."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given
from hypothesis import strategies as st

from pipeline.kafka import crcs


def v2_batch(base: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=None, key=b"k", value=value, headers=[("h", b"v")])
    data = bytearray(builder.build())
    data[0:8] = base.to_bytes(8, "big")  # the base offset is not under the CRC
    return bytes(data)


def v1_message(offset: int, value: bytes) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 30)
    builder.append(offset, timestamp=1, key=b"k", value=value)
    return bytes(builder.build())


def aiokafka_verdict(data: bytes) -> list[bool]:
    records, verdicts = MemoryRecords(data), []
    while records.has_next():
        batch = records.next_batch()
        if batch is None:
            break
        verdicts.append(batch.validate_crc())
    return verdicts


def test_whole_batches_pass_and_a_partial_one_at_the_end_is_left_alone() -> None:
    data = v2_batch(0, [b"a", b"bb"]) + v2_batch(2, [b"c" * 100_000]) + v1_message(3, b"old")
    assert crcs.corrupt_offset(data) is None
    assert crcs.corrupt_offset(data + v2_batch(4, [b"d" * 100])[:40]) is None


def test_a_corrupt_batch_is_named_by_its_base_offset() -> None:
    first, second = v2_batch(10, [b"a"]), v2_batch(11, [b"x" * 1000])
    broken = bytearray(first + second)
    broken[len(first) + 500] ^= 0x01  # a bit flipped in the second batch's value
    assert crcs.corrupt_offset(bytes(broken)) == 11
    legacy = bytearray(v1_message(7, b"old value"))
    legacy[-2] ^= 0x80
    assert crcs.corrupt_offset(bytes(legacy)) == 7


def test_a_length_shorter_than_a_header_is_corrupt_and_ends_the_walk() -> None:
    data = bytearray(v2_batch(5, [b"a"]))
    data[8:12] = (3).to_bytes(4, "big")
    assert crcs.corrupt_offset(bytes(data)) == 5


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4), st.data())
def test_any_bit_flipped_under_a_crc_is_found_where_aiokafka_finds_it(
    values: list[bytes], data: st.DataObject
) -> None:
    batches = [v2_batch(i, [v]) for i, v in enumerate(values)]
    which = data.draw(st.integers(0, len(batches) - 1))
    at = data.draw(st.integers(21, len(batches[which]) - 1))  # from the attributes on
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(batches[which])
    flipped[at] ^= 1 << bit
    broken = b"".join(batches[:which]) + bytes(flipped) + b"".join(batches[which + 1 :])
    assert aiokafka_verdict(broken)[which] is False
    assert crcs.corrupt_offset(broken) == which
    assert crcs.corrupt_offset(b"".join(batches)) is None


def test_a_fetch_response_with_a_corrupt_batch_raises_naming_where() -> None:
    good, bad = v2_batch(0, [b"ok"]), bytearray(v2_batch(40, [b"payload"]))
    bad[-1] ^= 0x01
    response = SimpleNamespace(
        topics=[
            ("claude.requests.a", [(0, 0, 9, 0, 0, None, good), (1, 1, -1, 0, 0, None, b"")]),
            ("claude.requests.b", [(3, 0, 99, 0, 0, None, bytes(bad))]),
        ]
    )
    with pytest.raises(CorruptRecordException, match=r"claude\.requests\.b\[3\].*offset 40"):
        crcs.check_fetched(response)
    response.topics.pop()
    crcs.check_fetched(response)  # intact, an error partition and an empty one: fine


def test_the_hardware_crc_is_installed() -> None:
    """Without it, aiokafka keeps its own check (correct, but 10 ms per 10 MB)."""
    assert crcs.FAST


@given(st.binary(max_size=3000), st.data())
def test_a_tail_s_crc_from_the_whole_s_and_the_head_s_is_its_own(
    data: bytes, draw: st.DataObject
) -> None:
    import google_crc32c

    split = draw.draw(st.integers(0, len(data)))
    whole, head = google_crc32c.value(data), google_crc32c.value(data[:split])
    assert crcs._tail_crc(whole, head, len(data) - split) == google_crc32c.value(data[split:])


def test_a_large_last_batch_is_checked_without_a_copy_and_still_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google_crc32c

    small, large = v2_batch(0, [b"a"]), v2_batch(1, [bytes(range(256)) * 1024])  # 256 KB
    hashed: list[int] = []
    original = google_crc32c.value

    def value(data: bytes) -> int:
        hashed.append(len(data))
        return int(original(data))

    monkeypatch.setattr(google_crc32c, "value", value)
    data = small + large
    assert crcs.corrupt_offset(data) is None
    # the small batch copied out; for the large one, all of the data and what precedes it
    assert hashed == [len(small) - 21, len(data), len(small) + 21]
    broken = bytearray(data)
    broken[-1000] ^= 0x10
    assert crcs.corrupt_offset(bytes(broken)) == 1
