"""Fetch responses read as columns (stream.io.fetched): the same records as
aiokafka's own reader, whole batches only, plain batches only, no crash on
damaged bytes; and the columns' joined values agree with the clicks decoder's."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.io import aiokafka_fetcher_patch
from stream.io.fetched import FetchedRecords, parse_batches
from stream.wire.clicks import _joined, decode_clicks

blobs = st.one_of(st.none(), st.binary(max_size=40))
records = st.tuples(blobs, blobs, st.lists(st.tuples(st.text(max_size=3), blobs), max_size=2))
batches = st.lists(st.lists(records, min_size=1, max_size=8), min_size=1, max_size=5)


def build(batch_records, base: int, compression: int = 0, transactional: bool = False) -> bytes:
    """One v2 record batch with aiokafka's builder: ``(key, value, headers)`` each."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression, is_transactional=transactional,
        producer_id=7 if transactional else -1, producer_epoch=0 if transactional else -1,
        base_sequence=0 if transactional else -1, batch_size=1 << 20,
    )  # fmt: skip
    for i, (key, value, headers) in enumerate(batch_records):
        builder.append(i, timestamp=1000 + i, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big", signed=True)  # offsets are base + delta
    return bytes(raw)


def response(spec) -> tuple[bytes, list[tuple]]:
    """Batches one after the other from offset 100, and the (offset, key, value) of each record."""
    raw, expected, base = b"", [], 100
    for batch_records in spec:
        raw += build(batch_records, base)
        expected += [(base + i, k, v) for i, (k, v, _) in enumerate(batch_records)]
        base += len(batch_records)
    return raw, expected


def aiokafka_reads(raw: bytes, fetch_offset: int) -> list[tuple]:
    out, records = [], MemoryRecords(raw)
    while records.has_next():
        for r in records.next_batch():
            if r.offset >= fetch_offset:
                out.append((r.offset, r.key, r.value))
    return out


def triples(fetched: FetchedRecords) -> list[tuple]:
    return [(r.offset, r.key, r.value) for r in fetched]


@settings(max_examples=200, deadline=None)
@given(batches, st.integers(0, 140), st.integers(0, 60))
def test_the_records_are_those_aiokafka_reads(spec, fetch_offset, cut):
    raw, expected = response(spec)
    raw = raw[: len(raw) - cut]  # a partial last batch is left out, as aiokafka does
    fetched, spans = parse_batches(raw, fetch_offset)
    assert triples(fetched) == aiokafka_reads(raw, fetch_offset)
    assert set(triples(fetched)) <= set(expected)
    assert spans[:, 1].tolist() == [end for end in spans[1:, 0].tolist()] + (
        [int(spans[-1, 1])] if len(spans) else []
    )  # whole batches, back to back


def test_a_batch_that_is_not_plain_is_read_the_general_way():
    plain = build([(None, b"{}", [])], 0)
    assert parse_batches(plain, 0) is not None
    for other in (
        build([(None, b"{}", [])], 1, compression=1),  # gzip
        build([(None, b"{}", [])], 1, transactional=True),
    ):
        assert parse_batches(plain + other, 0) is None
    legacy = bytearray(plain)
    legacy[16] = 1  # magic
    assert parse_batches(bytes(legacy), 0) is None


@settings(max_examples=300, deadline=None)
@given(batches, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_damaged_bytes_never_read_past_the_buffer(spec, damage):
    raw = bytearray(response(spec)[0])
    for at, byte in damage:
        raw[at % len(raw)] = byte
    parsed = parse_batches(bytes(raw), 0)
    if parsed is not None:
        fetched, _ = parsed
        for r in fetched:  # every key and value lies inside the buffer
            assert r.value is None or len(r.value) <= len(raw)


CLICK = b'{"event_id":"e","user_id":"u","item_id":"i","ts":5}'
odd_values = st.one_of(
    st.none(), st.binary(max_size=12),
    st.sampled_from([CLICK, b"", b" " + CLICK, b'{"a":[1]}', b"{}", CLICK[:-1] + b',"weight":0}']),
)  # fmt: skip


def decoded(values) -> tuple:
    batch, rejected = decode_clicks(values)
    columns = (batch.user_ids, batch.item_ids, batch.ts.tolist(), batch.weights.tolist())
    return columns, batch.event_ids, rejected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.just(CLICK), odd_values), max_size=8))
def test_joined_values_agree_with_the_decoders_join(values):
    fetched = FetchedRecords.from_records([(i, None, v) for i, v in enumerate(values)])
    ours, theirs = fetched.joined(), _joined(values)
    assert (None if ours is None else bytes(ours)) == theirs
    assert decoded(fetched) == decoded(values)


def test_gather_concat_since_and_pieces():
    a = FetchedRecords.from_records([(0, b"k0", b"v0"), (1, None, b"v1")])
    b = FetchedRecords.from_records([(2, b"k2", None)])

    class Loose:  # one of aiokafka's records
        offset, key, value = 3, b"k3", b"v3"

    both = FetchedRecords.gather([a, b, Loose()])
    assert triples(both) == [
        (0, b"k0", b"v0"),
        (1, None, b"v1"),
        (2, b"k2", None),
        (3, b"k3", b"v3"),
    ]
    assert both[-1].offset == 3 and both.value(2) is None and both.values()[3] == b"v3"
    assert triples(both.since(2)) == triples(both)[2:] and len(both.since(9)) == 0
    assert [p.offsets.tolist() for p in both.pieces(3)] == [[0, 1, 2], [3]]
    assert triples(FetchedRecords.concat([a[:1], a[1:]])) == triples(a)  # a shared buffer
    assert len(FetchedRecords.gather([])) == 0
    with pytest.raises(IndexError):
        both[4]


def test_a_damaged_checksum_is_an_error_of_the_lean_consumer():
    from aiokafka.consumer import fetcher
    from aiokafka.structs import TopicPartition

    assert aiokafka_fetcher_patch.install()
    raw = bytearray(build([(None, b'{"a":1}', []), (b"k", b'{"b":2}', [])], 0))

    def read(raw: bytes, check_crcs: bool = True):
        parts = fetcher.PartitionRecords(
            TopicPartition("t", 0), fetcher.MemoryRecords(raw), None, 0, None,
            aiokafka_fetcher_patch.LEAN_VALUES, check_crcs, 0,
        )  # fmt: skip
        return list(parts), parts

    got, parts = read(bytes(raw))
    assert [triples(p) for p in got] == [[(0, None, b'{"a":1}'), (1, b"k", b'{"b":2}')]]
    assert parts.next_fetch_offset == 2
    raw[-3] ^= 1  # inside the last value: still readable, the checksum fails
    with pytest.raises(CorruptRecordException):
        read(bytes(raw))
    got, _ = read(bytes(raw), check_crcs=False)
    assert got[0].value(1) != b'{"b":2}'


def test_values_and_offsets_are_int64_columns():
    raw, expected = response([[(None, b"{}", [])] * 3])
    fetched, spans = parse_batches(raw, 0)
    assert fetched.offsets.dtype == np.int64 and fetched.offsets.tolist() == [100, 101, 102]
    assert spans.tolist() == [[0, len(raw)]]
