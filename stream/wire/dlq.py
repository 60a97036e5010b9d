"""Dead-letter records (``schemas/dlq.schema.json``): clicks-dlq and items-dlq.

A rejected record is kept whole (key and raw value in base64) with where it
came from and why, on the partition of the record it replaces.

>>> recs = dlq_records([(b"u1", b"{oops", 3, "invalid JSON")], "app-clicks", 0, ts_ms=5)
>>> recs[0][0], recs[0][1]
(0, b'u1')
>>> orjson.loads(recs[0][2])["reason"], orjson.loads(recs[0][2])["offset"]
('invalid JSON', 3)
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import orjson


def dlq_records(
    rejects: Sequence[tuple[bytes | None, bytes | None, int, str]],
    topic: str,
    partition: int,
    ts_ms: int,
) -> list[tuple[int, bytes | None, bytes]]:
    """Dead-letter records ``(partition, key, value)`` for ``(key, raw value,
    offset, reason)`` of one partition of ``topic``."""
    out = []
    for key, raw, offset, reason in rejects:
        value = {
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "raw": base64.b64encode(raw or b"").decode("ascii"),
            "key": None if key is None else base64.b64encode(key).decode("ascii"),
            "ts": ts_ms,
        }
        out.append((partition, key, orjson.dumps(value)))
    return out
