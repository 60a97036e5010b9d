"""cf-delta records (``schemas/cf-delta.schema.json``): one per cluster and
batch of clicks, key the decimal cluster id, with the clicks' source range in
the value and again in a ``source`` header. A record also carries its
cluster's co-click pairs (:mod:`stream.core.pairs`); the global scope's
pairs go in a record of cluster ``-1`` (no items).

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
from stream.core.pairs import PairDelta

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
    pairs: PairDelta | None = None,
    pairs_ts_max_of: dict[int, int] | None = None,
    pairs_directed: bool = False,
) -> list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
    """One record per cluster of ``delta`` and scope of ``pairs`` (key the
    cluster id), covering source offsets ``first_offset..last_offset``, its
    source also in a header (:func:`source_header`); ``item_id_of`` maps item
    keys to ids. ``ts_max_of``: cluster id -> newest click time of that
    cluster (its record's ``ts_max``; default the delta's); ``pairs_ts_max_of``
    the same of the pairs per scope (``pairs_ts_max``; default the pairs');
    ``pairs_directed``: the pairs are (earlier, later) clicks (``coclick_directed``)."""
    pairs = pairs if pairs is not None and len(pairs) else None
    if not len(delta) and pairs is None:
        return []
    items = _by_scope(delta.cluster_ids, [delta.item_keys], delta.values, item_id_of)
    co = {}
    if pairs is not None:
        co = _by_scope(pairs.scopes, [pairs.a, pairs.b], pairs.values, item_id_of)
    source = {"topic": source_topic, "partition": source_partition,
              "first_offset": first_offset, "last_offset": last_offset}  # fmt: skip
    headers = [source_header(source_partition, first_offset, last_offset)]
    out = []
    for cid in sorted(items.keys() | co.keys()):
        if cid in items:
            landmark, ts_min = delta.landmark_ms, delta.ts_min
            ts_max = delta.ts_max if ts_max_of is None else ts_max_of.get(cid, delta.ts_max)
        else:  # co-clicks only (the global scope)
            landmark, ts_min, ts_max = pairs.landmark_ms, pairs.ts_min, pairs.ts_max
        ids, values = items.get(cid, ([], []))
        value = {
            "cluster_id": cid,
            "items": dict(zip(ids[0], values, strict=True)) if ids else {},
            "landmark": landmark,
            "ts_min": ts_min,
            "ts_max": ts_max,
            "source": source,
        }
        if cid in co:
            (a, b), values = co[cid]
            value["pairs"] = {"a": a, "b": b, "values": values}  # columns: one list each
            value["pairs_landmark"] = pairs.landmark_ms
            value["pairs_ts_max"] = (pairs_ts_max_of or {}).get(cid, pairs.ts_max)
            value["pairs_directed"] = pairs_directed
        out.append((partition_of(cid), str(cid).encode(), orjson.dumps(value), headers))
    return out


def _by_scope(scopes, key_columns, values, item_id_of) -> dict[int, tuple[list, list]]:
    """``{scope: ([ids of each key column], values)}``, one item-id lookup in all."""
    if not len(scopes):
        return {}
    order = np.argsort(scopes, kind="stable")
    scopes = scopes[order]
    n = len(scopes)
    ids = item_id_of(np.concatenate([col[order] for col in key_columns]))
    columns = [ids[i * n : (i + 1) * n] for i in range(len(key_columns))]
    values = values[order].tolist()
    cuts = [0, *(np.flatnonzero(np.diff(scopes)) + 1).tolist(), n]
    return {
        int(scopes[a]): ([col[a:b] for col in columns], values[a:b])
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    }


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
    if not -1 <= rec["cluster_id"] < 2**31 or isinstance(rec["cluster_id"], bool):
        raise ValueError("cluster_id: out of range")
    if rec.get("pairs") is not None:
        if not isinstance(rec.get("pairs_landmark"), int):
            raise ValueError("pairs: needs pairs_landmark")
        rec["pairs"] = _pair_columns(rec["pairs"])
        if not isinstance(rec.setdefault("pairs_ts_max", rec["ts_max"]), int):
            raise ValueError("pairs_ts_max: not an integer")
        if not isinstance(rec.setdefault("pairs_directed", False), bool):
            raise ValueError("pairs_directed: not a boolean")
    return rec


def _pair_columns(pairs) -> dict[str, list]:
    """A record's checked pairs as columns ``{"a": [...], "b": [...], "values":
    [...]}``; records written before the columns hold ``[a, b, value]`` rows.

    >>> _pair_columns([["x", "y", 1.5]])
    {'a': ['x'], 'b': ['y'], 'values': [1.5]}
    """
    if isinstance(pairs, list):  # rows, as records written before the columns
        if not all(isinstance(p, list) and len(p) == 3 for p in pairs):
            raise ValueError("pairs: each row is [item_id, other item_id, value]")
        a, b, values = (list(c) for c in zip(*pairs, strict=True)) if pairs else ([], [], [])
    elif isinstance(pairs, dict) and all(isinstance(pairs.get(c), list) for c in _COLUMNS):
        a, b, values = (pairs[c] for c in _COLUMNS)
    else:
        raise ValueError('pairs: needs {"a": [...], "b": [...], "values": [...]}')
    if not a:
        raise ValueError("pairs: empty")
    if not len(a) == len(b) == len(values):
        raise ValueError("pairs: columns of different lengths")
    if not all(type(x) is str for x in a) or not all(type(x) is str for x in b):
        raise ValueError("pairs: item ids must be strings")
    if any(map(str.__eq__, a, b)):
        raise ValueError("pairs: an item paired with itself")
    if not all(type(v) in (int, float) and v >= 0 for v in values):
        raise ValueError("pairs: values must be numbers >= 0")
    return {"a": a, "b": b, "values": values}


_COLUMNS = ("a", "b", "values")
