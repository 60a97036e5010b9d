"""cf-delta records (``schemas/cf-delta.schema.json``): one per cluster and
batch of clicks, key the decimal cluster id, with the clicks' source range in
the value and again in a ``source`` header.

The encoder takes the core's :class:`~stream.core.cf.CFDelta` of a batch and
returns ``(partition, key, value, headers)`` ready for a producer; the decoder
checks one consumed value; the header lets the CF owner recognise its own
deltas coming back without parsing the value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import orjson

from stream.core.cf import CFDelta

SOURCE_HEADER = "source"


def cf_delta_records(
    delta: CFDelta,
    item_id_of: Callable[[np.ndarray], list[str]],
    source_topic: str,
    source_partition: int,
    first_offset: int,
    last_offset: int,
    partition_of: Callable[[int], int],
    ts_max_of: dict[int, int] | None = None,
) -> list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
    """One record per cluster of ``delta`` (key cluster_id), covering source
    offsets ``first_offset..last_offset``, its source also in a header
    (:func:`source_header`); ``item_id_of`` maps item keys to ids.
    ``ts_max_of``: cluster id -> newest click time of that cluster (its
    record's ``ts_max``; default the delta's)."""
    if not len(delta):
        return []
    order = np.argsort(delta.cluster_ids, kind="stable")
    clusters = delta.cluster_ids[order]
    item_ids = item_id_of(delta.item_keys[order])
    values = delta.values[order].tolist()
    cuts = np.flatnonzero(np.diff(clusters)) + 1
    out = []
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), len(clusters)]
    source = {"topic": source_topic, "partition": source_partition,
              "first_offset": first_offset, "last_offset": last_offset}  # fmt: skip
    headers = [source_header(source_partition, first_offset, last_offset)]
    for a, b in zip(starts, ends, strict=True):
        cid = int(clusters[a])
        value = {
            "cluster_id": cid,
            "items": dict(zip(item_ids[a:b], values[a:b], strict=True)),
            "landmark": delta.landmark_ms,
            "ts_min": delta.ts_min,
            "ts_max": delta.ts_max if ts_max_of is None else ts_max_of.get(cid, delta.ts_max),
            "source": source,
        }
        out.append((partition_of(cid), str(cid).encode(), orjson.dumps(value), headers))
    return out


def source_header(partition: int, first_offset: int, last_offset: int) -> tuple[str, bytes]:
    """The cf-delta record header repeating its source, ``b"partition:first:last"``:
    the CF owner recognises its own deltas coming back without parsing the value.

    >>> source_header(1, 20, 29)
    ('source', b'1:20:29')
    >>> parse_source_header([source_header(1, 20, 29)])
    (1, 20, 29)
    """
    return SOURCE_HEADER, f"{partition}:{first_offset}:{last_offset}".encode()


def parse_source_header(headers) -> tuple[int, int, int] | None:
    """(partition, first offset, last offset) from a record's headers; None when
    absent or malformed (the value then says it)."""
    for name, value in headers or ():
        if name == SOURCE_HEADER:
            try:
                p, first, last = (int(x) for x in value.split(b":"))
            except (ValueError, AttributeError):
                return None
            return p, first, last
    return None


def decode_cf_delta(value: bytes) -> dict:
    """Parse and check one cf-delta record (raises ``ValueError`` with a reason)."""
    try:
        rec = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValueError("invalid JSON") from None
    if not isinstance(rec, dict):
        raise ValueError("not an object")
    for name in ("cluster_id", "items", "landmark", "ts_min", "ts_max", "source"):
        if name not in rec:
            raise ValueError(f"missing field: {name}")
    src = rec["source"]
    if not isinstance(src, dict) or not all(
        isinstance(src.get(n), int) for n in ("partition", "first_offset")
    ):
        raise ValueError("source: needs partition and first_offset")
    src.setdefault("last_offset", src["first_offset"])
    if not isinstance(rec["items"], dict) or not isinstance(rec["cluster_id"], int):
        raise ValueError("cluster_id/items: wrong type")
    return rec
