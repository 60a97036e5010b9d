"""Worker records on the ``<app>-workers`` topic (compacted, one partition,
key the worker id): what a worker owns and how many members each cluster has
in its partitions (:mod:`stream.app.registry` reads them into a view).

A record: ``{worker_id, url, leader, clicks_partitions, cf_partitions,
sizes: {clicks partition: {cluster id: members}}, users, ts}``; a value that
is not a JSON object with ``worker_id`` and ``ts`` decodes to None (skipped).

>>> value = encode_worker({"worker_id": "a", "ts": 1.5, "leader": True})
>>> value
b'{"worker_id":"a","ts":1.5,"leader":true}'
>>> decode_worker(value)["leader"], decode_worker(b"[1]"), decode_worker(b"{oops")
(True, None, None)
"""

from __future__ import annotations

import orjson


def encode_worker(record: dict) -> bytes:
    """The value of a worker record."""
    return orjson.dumps(record)


def decode_worker(value: bytes) -> dict | None:
    """The record in ``value``, or None when it is not a worker record."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or "worker_id" not in record or "ts" not in record:
        return None
    return record
