"""A batch of decoded clicks: the unit every core verb works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ClickBatch:
    """Clicks in arrival order, column-wise.

    - ``user_ids``, ``item_ids``: ``list[str]`` of length n
    - ``ts``: (n,) int64, epoch milliseconds
    - ``weights``: (n,) float64, > 0 (1.0 when the record had none)
    - ``event_ids``: ``list[str]`` of length n (may be empty when unknown)

    >>> b = ClickBatch.from_columns(["u1", "u2"], ["i1", "i1"], [1000, 2000])
    >>> len(b), b.weights.tolist()
    (2, [1.0, 1.0])
    """

    user_ids: list[str]
    item_ids: list[str]
    ts: np.ndarray
    weights: np.ndarray
    event_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_columns(cls, user_ids, item_ids, ts, weights=None, event_ids=None) -> ClickBatch:
        """Build a batch from sequences, checking lengths and dtypes once."""
        user_ids = list(user_ids)
        item_ids = list(item_ids)
        n = len(user_ids)
        ts_arr = np.ascontiguousarray(ts, dtype=np.int64)
        w = np.ones(n) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        ev = [] if event_ids is None else list(event_ids)
        if len(item_ids) != n or ts_arr.shape != (n,) or w.shape != (n,):
            raise ValueError("user_ids, item_ids, ts and weights must have the same length")
        if ev and len(ev) != n:
            raise ValueError("event_ids must be empty or have one entry per click")
        if n and not np.all(w > 0):
            raise ValueError("weights must be > 0")
        return cls(user_ids, item_ids, ts_arr, w, ev)

    @classmethod
    def from_records(cls, records) -> ClickBatch:
        """Build a batch from click dicts (already valid per schemas/click)."""
        records = list(records)
        return cls.from_columns(
            [r["user_id"] for r in records],
            [r["item_id"] for r in records],
            [r["ts"] for r in records],
            [r.get("weight", 1.0) for r in records],
            [r["event_id"] for r in records],
        )

    def slice(self, start: int, stop: int) -> ClickBatch:
        """The clicks ``start:stop`` as a new batch (views of the arrays)."""
        return ClickBatch(
            self.user_ids[start:stop],
            self.item_ids[start:stop],
            self.ts[start:stop],
            self.weights[start:stop],
            self.event_ids[start:stop] if self.event_ids else [],
        )
