"""Fetched Kafka records as columns over the fetch response's bytes.

A :class:`FetchedRecords` holds ``n`` records of one partition, in offset
order: their offsets, and where each key and value lies in one byte buffer.
The clicks batch loop gets them straight from the fetch response
(:mod:`stream.io.aiokafka_fetcher_patch`): :func:`parse_batches` reads the record batches
of message format v2 in a compiled loop, so no Python object is made per
record, and :meth:`FetchedRecords.joined` hands the values to the decoder as
the text of one JSON array (:func:`stream.wire.clicks.decode_clicks`). Keys and
values become ``bytes`` only when asked for one by one (a rejected click's,
for the dead-letter topic).

The layout read (Kafka's message format v2, integers big-endian): a batch is
a 61-byte header (base offset int64 at 0, length int32 at 8 counting from
byte 12, magic int8 at 16, attributes int16 at 21, last offset delta int32
at 23, record count int32 at 57) and its records; a record is its length,
attributes (1 byte), timestamp delta, offset delta, key length, key, value
length, value and headers, every length and delta a zigzag varint, a length
of -1 meaning null.

>>> fetched = FetchedRecords.from_records([(5, b"k", b'{"a":1}'), (6, None, b'{"b":2}')])
>>> len(fetched), fetched.offsets.tolist(), fetched[1]
(2, [5, 6], Record(offset=6, key=None, value=b'{"b":2}'))
>>> fetched.joined()
b'[{"a":1},\\n{"b":2}]'
>>> [r.offset for r in fetched.since(6)], [len(p) for p in fetched.pieces(1)]
([6], [1, 1])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numba
import numpy as np

HEADER = 61  # bytes of a v2 batch header
_PLAIN_MASK = 0x37  # attribute bits of compression (0-2), transactions (4), control (5)


class Record(NamedTuple):
    """One fetched record: what the batch loop reads of it."""

    offset: int
    key: bytes | None
    value: bytes | None


class FetchedRecords:
    """``n`` records of one partition in offset order.

    - ``buf``: bytes holding the keys and values
    - ``offsets``: (n,) int64
    - ``key_at``/``value_at``: (n,) int64 positions in ``buf``
    - ``key_len``/``value_len``: (n,) int64 lengths, -1 for a null key/value
    """

    __slots__ = ("buf", "offsets", "key_at", "key_len", "value_at", "value_len")

    def __init__(self, buf, offsets, key_at, key_len, value_at, value_len):
        self.buf = buf
        self.offsets = offsets
        self.key_at = key_at
        self.key_len = key_len
        self.value_at = value_at
        self.value_len = value_len

    # -- making ------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable) -> FetchedRecords:
        """From ``(offset, key, value)`` triples or objects with those attributes
        (aiokafka's records): their keys and values are copied into one buffer."""
        triples = [r if isinstance(r, tuple) else (r.offset, r.key, r.value) for r in records]
        n = len(triples)
        offsets = np.fromiter((t[0] for t in triples), dtype=np.int64, count=n)
        parts: list[bytes] = []
        at = np.zeros(2 * n, dtype=np.int64)
        lengths = np.full(2 * n, -1, dtype=np.int64)
        pos = 0
        for i, (_, key, value) in enumerate(triples):
            for j, data in ((2 * i, key), (2 * i + 1, value)):
                if data is not None:
                    data = bytes(data)
                    at[j], lengths[j] = pos, len(data)
                    parts.append(data)
                    pos += len(data)
        return cls(b"".join(parts), offsets, at[0::2], lengths[0::2], at[1::2], lengths[1::2])

    @classmethod
    def gather(cls, parts: Iterable) -> FetchedRecords:
        """One :class:`FetchedRecords` of a partition's fetched parts in order:
        :class:`FetchedRecords` and single records (a consumer without the
        column path returns those) may be mixed."""
        chunks: list[FetchedRecords] = []
        loose: list = []
        for part in parts:
            if isinstance(part, FetchedRecords):
                if loose:
                    chunks.append(cls.from_records(loose))
                    loose = []
                chunks.append(part)
            else:
                loose.append(part)
        if loose or not chunks:
            chunks.append(cls.from_records(loose))
        return chunks[0] if len(chunks) == 1 else cls.concat(chunks)

    @classmethod
    def concat(cls, chunks: list[FetchedRecords]) -> FetchedRecords:
        """The records of ``chunks`` one after the other (buffers joined, unless shared)."""
        bufs = [c.buf for c in chunks]
        if all(b is bufs[0] for b in bufs):
            buf, shifts = bufs[0], [0] * len(chunks)
        else:
            shifts = np.cumsum([0] + [len(b) for b in bufs[:-1]]).tolist()
            buf = b"".join(bufs)

        def cat(name: str, shift: bool):
            cols = [getattr(c, name) for c in chunks]
            if shift:
                cols = [col + s for col, s in zip(cols, shifts, strict=True)]
            return np.concatenate(cols)

        return cls(
            buf, cat("offsets", False), cat("key_at", True), cat("key_len", False),
            cat("value_at", True), cat("value_len", False),
        )  # fmt: skip

    # -- reading -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return FetchedRecords(
                self.buf, self.offsets[i], self.key_at[i], self.key_len[i],
                self.value_at[i], self.value_len[i],
            )  # fmt: skip
        i = range(len(self))[i]  # negative indexes; IndexError past the end
        return Record(int(self.offsets[i]), self.key(i), self.value(i))

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        if not len(self):
            return "FetchedRecords(0 records)"
        return f"FetchedRecords({len(self)} records, offsets {self.offsets[0]}..{self.offsets[-1]})"

    def _slice(self, at, length, i: int) -> bytes | None:
        n = int(length[i])
        return None if n < 0 else bytes(self.buf[int(at[i]) : int(at[i]) + n])

    def key(self, i: int) -> bytes | None:
        return self._slice(self.key_at, self.key_len, i)

    def value(self, i: int) -> bytes | None:
        return self._slice(self.value_at, self.value_len, i)

    def values(self) -> list[bytes | None]:
        buf = self.buf
        return [
            None if n < 0 else bytes(buf[a : a + n])
            for a, n in zip(self.value_at.tolist(), self.value_len.tolist(), strict=True)
        ]

    def since(self, offset: int) -> FetchedRecords:
        """The records at ``offset`` and after."""
        return self[int(np.searchsorted(self.offsets, offset)) :]

    def pieces(self, size: int) -> list[FetchedRecords]:
        """Consecutive runs of at most ``size`` records."""
        return [self[i : i + size] for i in range(0, len(self), max(size, 1))]

    def joined(self) -> bytes | None:
        """The values as the text of one JSON array, ``[v0,\nv1,...]``, when each
        starts with ``{`` and none holds ``[``; else None (a null or empty value
        too). Then each ``,\n`` can only be a separator of the outer array (see
        :func:`stream.wire.clicks._joined`). A compiled loop copies the values;
        the ``[`` is looked for in the result (``bytes.find``), cheaper than
        checking byte by byte in the copying loop (``tests/bench/bench_fetch.py``)."""
        n = len(self)
        if n == 0:
            return None
        out = np.empty(int(self.value_len.sum()) + 2 * n + 1, dtype=np.uint8)
        end = _join(np.frombuffer(self.buf, dtype=np.uint8), self.value_at, self.value_len, out)
        if end < 0:
            return None
        text = out[:end].tobytes()
        return None if text.find(b"[", 1) >= 0 else text


# -- parsing a fetch response -------------------------------------------------------
def parse_batches(raw: bytes, fetch_offset: int):
    """Records at or after ``fetch_offset`` of the whole batches in ``raw`` (a
    fetch response's records of one partition; a last, partial batch is left
    out, as the broker may send one).

    Returns ``(records, spans)``, ``spans`` (b, 2) int64 the start and end of
    each whole batch in ``raw`` (for checksums), or ``None`` when a batch is not
    plain (another magic, compressed, transactional or control) or cannot be
    read: the caller then reads the response the general way.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    spans = np.empty((len(buf) // HEADER + 1, 2), dtype=np.int64)
    n_batches, n_records = _scan(buf, spans)
    if n_batches < 0:
        return None
    spans = spans[:n_batches]
    cols = np.empty((5, n_records), dtype=np.int64)
    n = _records(buf, spans, fetch_offset, cols)
    if n < 0:
        return None
    cols = cols[:, :n]
    return FetchedRecords(raw, cols[0], cols[1], cols[2], cols[3], cols[4]), spans


def batch_base_offset(raw: bytes, start: int) -> int:
    """The base offset of the batch starting at byte ``start`` of ``raw``."""
    return int.from_bytes(raw[start : start + 8], "big", signed=True)


def batch_end_offset(raw: bytes, span) -> int:
    """The offset after the last one of the batch at ``span`` (base offset +
    last offset delta + 1), whether or not its records are all there."""
    start = int(span[0])
    last_delta = int.from_bytes(raw[start + 23 : start + 27], "big", signed=True)
    return batch_base_offset(raw, start) + last_delta + 1


@numba.njit(cache=True, inline="always")
def _be(buf, pos, size):
    """A big-endian signed integer of ``size`` bytes at ``pos``."""
    x = np.int64(0)
    for i in range(size):
        x = (x << 8) | np.int64(buf[pos + i])
    shift = 64 - 8 * size
    return (x << shift) >> shift if shift else x


@numba.njit(cache=True)
def _scan(buf, spans):
    """Whole batches of ``buf``: fills ``spans`` (start, end); returns (batches,
    records announced), or (-1, 0) when one is not plain or malformed."""
    n = len(buf)
    pos = 0
    b = 0
    records = 0
    while pos + 12 <= n:
        length = _be(buf, pos + 8, 4)
        end = pos + 12 + length
        if end > n:
            break  # a partial batch at the end of the response
        if length < HEADER - 12 or buf[pos + 16] != 2:
            return -1, 0
        if _be(buf, pos + 21, 2) & _PLAIN_MASK:
            return -1, 0
        count = _be(buf, pos + 57, 4)
        if count < 0 or count > end - pos - HEADER:  # a record takes a byte at least
            return -1, 0
        spans[b, 0] = pos
        spans[b, 1] = end
        records += count
        b += 1
        pos = end
    return b, records


@numba.njit(cache=True, inline="always")
def _varint(buf, pos, end):
    """(value, next position) of the zigzag varint at ``pos``; position -1 past ``end``."""
    x = np.int64(0)
    shift = 0
    while pos < end and shift < 64:
        byte = np.int64(buf[pos])
        pos += 1
        x |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (x >> 1) ^ -(x & 1), pos
        shift += 7
    return np.int64(0), -1


@numba.njit(cache=True)
def _records(buf, spans, fetch_offset, cols):
    """Offsets, key and value positions and lengths of the records of ``spans``
    at or after ``fetch_offset`` into ``cols`` (5, n); returns how many, or -1
    when a record runs past its batch."""
    out = 0
    for b in range(len(spans)):
        start, end = spans[b, 0], spans[b, 1]
        base = _be(buf, start, 8)
        count = _be(buf, start + 57, 4)
        pos = start + HEADER
        for _ in range(count):
            length, pos = _varint(buf, pos, end)
            if pos < 0 or length < 0 or pos + length > end:
                return -1
            record_end = pos + length
            pos += 1  # attributes
            _, pos = _varint(buf, pos, record_end)  # timestamp delta
            if pos < 0:
                return -1
            delta, pos = _varint(buf, pos, record_end)
            if pos < 0:
                return -1
            key_len, pos = _varint(buf, pos, record_end)
            if pos < 0 or pos + max(key_len, 0) > record_end:
                return -1
            key_at = pos
            pos += max(key_len, 0)
            value_len, pos = _varint(buf, pos, record_end)
            if pos < 0 or pos + max(value_len, 0) > record_end:
                return -1
            if base + delta >= fetch_offset:
                cols[0, out] = base + delta
                cols[1, out] = key_at
                cols[2, out] = max(key_len, -1)
                cols[3, out] = pos
                cols[4, out] = max(value_len, -1)
                out += 1
            pos = record_end  # the headers are not read
    return out


@numba.njit(cache=True)
def _join(buf, at, length, out):
    """``[`` + the values joined by ``,\n`` + ``]`` into ``out``; returns the
    bytes written, or -1 when a value is null or empty or does not start
    with ``{``."""
    pos = 1
    out[0] = 91  # [
    for i in range(len(at)):
        n = length[i]
        a = at[i]
        if n <= 0 or buf[a] != 123:  # {
            return -1
        if i:
            out[pos] = 44  # ,
            out[pos + 1] = 10  # \n
            pos += 2
        out[pos : pos + n] = buf[a : a + n]
        pos += n
    out[pos] = 93  # ]
    return pos + 1


def load_kernels() -> None:
    """Load (or compile) the compiled loops before the first real batch."""
    fetched = FetchedRecords.from_records([(0, None, b"{}")])
    fetched.joined()
    parse_batches(b"", 0)
