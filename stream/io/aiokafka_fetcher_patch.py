"""A patch of aiokafka's fetcher: fetched clicks as columns, without a record object each.

It replaces the record-by-record part of aiokafka's ``Fetcher`` (installed by
:func:`install` when the installed aiokafka has the shape it expects) for the
clicks batch loop.

aiokafka decodes every fetched record into its own record object (offset,
key, value, timestamp, headers) and then copies it into a new
``ConsumerRecord``. The batch loop reads ``offset``, ``key`` and ``value``
only, and decodes the values of a whole batch at once. A consumer that opts
in (:data:`LEAN_VALUES` as its ``value_deserializer``) gets each partition's
fetch as ONE :class:`~stream.io.fetched.FetchedRecords`: the offsets and the
places of keys and values in the fetch response's bytes, read by a compiled
loop (:func:`stream.io.fetched.parse_batches`). A batch that is not plain
(compressed, transactional, another message format) makes that fetch go the
general way, record by record, into the same columns.

Checksums are checked as aiokafka does (``check_crcs``), batch by batch.
Why: the per-record objects cost more than decoding the clicks; ``python
tests/bench/bench_fetch.py`` times each way.

Every other consumer in the process, faust's among them, keeps its
``ConsumerRecord`` objects. The switch goes through aiokafka's
``fetcher.PartitionRecords`` and ``fetcher.MemoryRecords`` (which now also
keeps the response's bytes), not public APIs: :func:`install` checks their
shape first and otherwise leaves aiokafka alone (a lean consumer then gets
ordinary ``ConsumerRecord`` objects, which
:meth:`~stream.io.fetched.FetchedRecords.gather` turns into columns too).
"""

from __future__ import annotations

import inspect
import logging

from stream.io.fetched import FetchedRecords, batch_base_offset, batch_end_offset, parse_batches

logger = logging.getLogger(__name__)

_EXPECTED = [
    "tp", "records", "aborted_transactions", "fetch_offset", "key_deserializer",
    "value_deserializer", "check_crcs", "isolation_level",
]  # fmt: skip
_MEMORY_RECORDS = ("has_next", "next_batch", "size_in_bytes")


class _LeanValues:
    """The value deserializer that marks a lean consumer: values stay bytes."""

    def __call__(self, value: bytes | None) -> bytes | None:
        return value

    def __repr__(self) -> str:
        return "LEAN_VALUES"


#: Pass as ``value_deserializer`` to get each partition's fetch as columns.
LEAN_VALUES = _LeanValues()

_installed: bool | None = None


def install() -> bool:
    """Route partitions fetched by lean consumers to columns (once per process);
    False when this aiokafka's fetcher has another shape."""
    global _installed
    if _installed is not None:
        return _installed
    from aiokafka.consumer import fetcher
    from aiokafka.errors import CorruptRecordException

    base = fetcher.PartitionRecords
    memory_records = getattr(fetcher, "MemoryRecords", None)
    try:
        params = list(inspect.signature(base.__init__).parameters)[1:]
    except (TypeError, ValueError):
        params = []
    if (
        params != _EXPECTED
        or not callable(getattr(base, "_consumer_record", None))
        or not callable(getattr(base, "_unpack_records", None))
        or not all(callable(getattr(memory_records, f, None)) for f in _MEMORY_RECORDS)
    ):
        logger.warning("aiokafka's fetcher is not the shape expected: clicks use ConsumerRecord")
        _installed = False
        return False

    class KeptBytes:
        """aiokafka's ``MemoryRecords``, keeping the bytes it reads as ``raw``."""

        __slots__ = ("raw", "_records")

        def __init__(self, data):
            self.raw = data
            self._records = memory_records(data)

        def has_next(self):
            return self._records.has_next()

        def next_batch(self):
            return self._records.next_batch()

        def size_in_bytes(self):
            return self._records.size_in_bytes()

    class LeanPartitionRecords(base):
        def _consumer_record(self, tp, record):
            return record  # offset, key, value, timestamp, headers as decoded

        def _unpack_records(self):
            raw = getattr(self._records, "raw", None)
            parsed = None if raw is None else parse_batches(raw, self.next_fetch_offset)
            if parsed is None:  # the general way, record by record
                loose = list(super()._unpack_records())
                if loose:
                    yield FetchedRecords.from_records(loose)
                return
            fetched, spans = parsed
            for start, _ in spans.tolist():
                batch = self._records.next_batch()
                if batch is None or batch.base_offset != batch_base_offset(raw, start):
                    raise CorruptRecordException(f"Unreadable record batch - {self._tp}")
                if self._check_crcs and not batch.validate_crc():
                    raise CorruptRecordException(f"Invalid CRC - {self._tp}")
            if len(spans):
                self.next_fetch_offset = batch_end_offset(raw, spans[-1])
            if len(fetched):
                yield fetched

    def partition_records(tp, records, aborted, offset, key_de, value_de, *rest):
        cls = LeanPartitionRecords if value_de is LEAN_VALUES else base
        return cls(tp, records, aborted, offset, key_de, value_de, *rest)

    fetcher.MemoryRecords = KeptBytes
    fetcher.PartitionRecords = partition_records
    _installed = True
    return True
