"""Fetched records without a ``ConsumerRecord`` each, for the clicks batch loop.

aiokafka decodes every fetched record into its own record object (offset,
key, value, timestamp, headers: a C extension type when aiokafka has its
extensions) and then copies it into a new ``ConsumerRecord`` dataclass,
measuring key and value sizes and copying the headers into a tuple. The batch
loop reads ``offset``, ``key`` and ``value`` only, which the decoded record has
already: skipping the copy made a bare ``getmany`` loop over 200k synthetic
clicks ~0.7 instead of ~1.2 us a record (garbage collector frozen, as in
the worker), about an eighth of the worker's time per click.

A consumer opts in by passing :data:`LEAN_VALUES` as its ``value_deserializer``
(a value deserializer that returns the value as it is); every other consumer
in the process, faust's among them, keeps its ``ConsumerRecord`` objects. The
switch goes through aiokafka's ``fetcher.PartitionRecords``, which is not a
public API: :func:`install` checks its shape first and otherwise leaves aiokafka
alone (records are then ordinary ``ConsumerRecord`` objects, which have the
same three fields).
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)

_EXPECTED = [
    "tp", "records", "aborted_transactions", "fetch_offset", "key_deserializer",
    "value_deserializer", "check_crcs", "isolation_level",
]  # fmt: skip


class _LeanValues:
    """The value deserializer that marks a lean consumer: values stay bytes."""

    def __call__(self, value: bytes | None) -> bytes | None:
        return value

    def __repr__(self) -> str:
        return "LEAN_VALUES"


#: Pass as ``value_deserializer`` to get aiokafka's decoded records as they are.
LEAN_VALUES = _LeanValues()

_installed: bool | None = None


def install() -> bool:
    """Route partitions fetched by lean consumers to records without the copy
    (once per process); False when this aiokafka's fetcher has another shape."""
    global _installed
    if _installed is not None:
        return _installed
    from aiokafka.consumer import fetcher

    base = fetcher.PartitionRecords
    try:
        params = list(inspect.signature(base.__init__).parameters)[1:]
    except (TypeError, ValueError):
        params = []
    if params != _EXPECTED or not callable(getattr(base, "_consumer_record", None)):
        logger.warning("aiokafka's fetcher is not the shape expected: clicks use ConsumerRecord")
        _installed = False
        return False

    class LeanPartitionRecords(base):
        def _consumer_record(self, tp, record):
            return record  # offset, key, value, timestamp, headers as decoded

    def partition_records(tp, records, aborted, offset, key_de, value_de, *rest):
        cls = LeanPartitionRecords if value_de is LEAN_VALUES else base
        return cls(tp, records, aborted, offset, key_de, value_de, *rest)

    fetcher.PartitionRecords = partition_records
    _installed = True
    return True
