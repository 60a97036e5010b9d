"""Cluster candidates (``schemas/cluster-candidates.schema.json``): a
cluster's current top items, published every ``candidates_interval_s`` for
downstream rankers; key the cluster id as a decimal string.

>>> key, value = candidates_record(7, ["i1", "i2"], [2.5, 1.0], centres_version=3, ts_ms=9)
>>> key, value
(b'7', b'{"cluster_id":7,"items":[{"item_id":"i1","score":2.5},{"item_id":"i2","score":1.0}],"centres_version":3,"ts":9}')
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson


def candidates_record(
    cluster_id: int,
    item_ids: Sequence[str],
    scores: Sequence[float],
    centres_version: int,
    ts_ms: int,
) -> tuple[bytes, bytes]:
    """Key and value of one cluster's candidates, best first; scores rounded
    to 6 decimals (they are decayed popularities, not exact counts)."""
    items = [
        {"item_id": item, "score": round(float(score), 6)}
        for item, score in zip(item_ids, scores, strict=True)
    ]
    value = {
        "cluster_id": int(cluster_id),
        "items": items,
        "centres_version": int(centres_version),
        "ts": int(ts_ms),
    }
    return str(int(cluster_id)).encode(), orjson.dumps(value)
