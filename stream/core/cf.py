"""Per-cluster real-time collaborative filtering: decayed item popularity.

Every cluster keeps, for each item its members clicked, the click weight
decayed with a half-life. Scores use *forward decay*: a click of weight ``w`` at
``t`` is stored as ``w * 2**((t - L) / h)`` relative to a landmark ``L``; the
decayed score at ``now`` is ``stored * 2**((L - now) / h)``. Stored values never
need a sweep to age them; when exponents grow large the landmark moves forward
and all values are rescaled once (``rebase``).

Clicks reach a table as a :class:`CFDelta`, already summed per (cluster, item)
for a batch; the worker sends the same deltas over Kafka to the cluster's owner.

The table is bounded: :meth:`CFTable.compact` drops scores below
``prune_below`` and keeps at most ``max_items`` items per cluster; it runs by
itself whenever the table doubled since the last compaction.

>>> day = 86_400_000
>>> cf = CFTable(half_life_ms=day)
>>> cf.add(make_delta([7, 7, 7, 7], [11, 11, 11, 12], [0, 0, 0, day], [1.0] * 4, day))
>>> keys, scores = cf.top(7, 2)          # at the newest time seen: 3 clicks a day old
>>> keys.tolist(), scores.round(3).tolist()
([11, 12], [1.5, 1.0])
>>> cf.recommend([7], [1.0], n=5, exclude=[12])[0].tolist()
[11]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from stream.core.hashmap import Int64Map, _sum_pairs

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
#: Rebase the landmark when a stored value would exceed 2**REBASE_EXPONENT.
REBASE_EXPONENT = 60.0
#: Do not compact tables smaller than this many (cluster, item) entries.
MIN_COMPACT_ENTRIES = 100_000
_NO_SLOTS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class CFDelta:
    """Increments of CF scores, one entry per (cluster, item).

    - ``cluster_ids``: (n,) int64; ``item_keys``: (n,) int64 stable item keys
    - ``values``: (n,) float64, ``sum(w * 2**((t - landmark_ms) / half_life))``
    - ``landmark_ms``, ``ts_min``, ``ts_max``: epoch ms
    """

    cluster_ids: np.ndarray
    item_keys: np.ndarray
    values: np.ndarray
    landmark_ms: int
    ts_min: int
    ts_max: int

    def __len__(self) -> int:
        return len(self.cluster_ids)

    @classmethod
    def empty(cls) -> CFDelta:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, np.zeros(0), 0, 0, 0)

    def for_cluster(self, cluster_id: int) -> CFDelta:
        sel = self.cluster_ids == cluster_id
        return CFDelta(
            self.cluster_ids[sel],
            self.item_keys[sel],
            self.values[sel],
            self.landmark_ms,
            self.ts_min,
            self.ts_max,
        )


def blend(lists, n: int, exclude=frozenset()) -> list:
    """Blend per-cluster top lists ``[(share, [(item, score), ...]), ...]`` into the
    best ``n`` items not in ``exclude``: ``[(item, share-weighted score sum)]``,
    best first (ties by item). Items may be keys or ids.

    >>> blend([(0.75, [("a", 2.0), ("b", 1.0)]), (0.25, [("b", 4.0)])], 2)
    [('b', 1.75), ('a', 1.5)]
    """
    blended: dict = {}
    for share, items in lists:
        for item, score in items:
            if item not in exclude:
                blended[item] = blended.get(item, 0.0) + share * score
    return sorted(blended.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def make_delta(cluster_ids, item_keys, ts, weights, half_life_ms: float) -> CFDelta:
    """Sum clicks per (cluster, item) into one :class:`CFDelta`.

    ``cluster_ids``, ``item_keys``: (n,) int64; ``ts``: (n,) int64 ms;
    ``weights``: (n,) float64 (already split by membership share).
    The landmark is the newest ``ts`` (so no value can overflow; a click
    older than ~1000 half-lives rounds to 0); entries come out in order of
    first appearance.
    """
    cluster_ids = np.ascontiguousarray(cluster_ids, dtype=np.int64)
    item_keys = np.ascontiguousarray(item_keys, dtype=np.int64)
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n = len(cluster_ids)
    if not n:
        return CFDelta.empty()
    clusters = np.empty(n, dtype=np.int64)
    keys = np.empty(n, dtype=np.int64)
    sums = np.empty(n, dtype=np.float64)
    count, ts_min, landmark = _decayed_sums(
        cluster_ids, item_keys, ts, weights, float(half_life_ms), clusters, keys, sums
    )
    return CFDelta(clusters[:count], keys[:count], sums[:count], landmark, ts_min, landmark)


@numba.njit(cache=True)
def _decayed_sums(cluster_ids, item_keys, ts, weights, half_life_ms, clusters, keys, sums):
    """:func:`make_delta` in one compiled call instead of a numpy pass per step
    (``clusterstream bench core`` times the stage); returns (pairs, ts_min,
    landmark)."""
    landmark, ts_min = ts[0], ts[0]
    for t in ts:
        landmark, ts_min = max(landmark, t), min(ts_min, t)
    values = np.empty(len(ts), dtype=np.float64)
    for i in range(len(ts)):
        values[i] = weights[i] * np.exp2((ts[i] - landmark) / half_life_ms)
    return _sum_pairs(cluster_ids, item_keys, values, clusters, keys, sums), ts_min, landmark


class CFTable:
    """Decayed item scores per cluster, keyed by (cluster id, item key)."""

    def __init__(
        self,
        half_life_ms: float = DAY_MS,
        max_items: int = 2000,
        prune_below: float = 0.01,
        capacity: int = 4096,
    ):
        if half_life_ms <= 0 or max_items < 1 or prune_below < 0:
            raise ValueError("half_life_ms > 0, max_items >= 1 and prune_below >= 0 required")
        self.half_life_ms = float(half_life_ms)
        self.max_items = max_items
        self.prune_below = prune_below
        self.landmark_ms: int | None = None
        self.clock_ms: int | None = None
        self._compact_at = MIN_COMPACT_ENTRIES
        self._reset(capacity)

    def _reset(self, capacity: int) -> None:
        self._item_index = Int64Map(capacity)  # item key -> local item number
        self._item_keys = np.zeros(capacity, dtype=np.int64)  # local item number -> key
        self._slot = Int64Map(capacity)  # cluster << 32 | local item number -> slot
        self._cluster = np.zeros(capacity, dtype=np.int64)
        self._item = np.zeros(capacity, dtype=np.int64)
        self._value = np.zeros(capacity, dtype=np.float64)
        self._n = 0
        self._by_cluster: dict[int, np.ndarray] = {}  # cluster -> its slots
        self._grouped = 0  # slots below this are in _by_cluster

    def __len__(self) -> int:
        return self._n

    @property
    def clusters(self) -> list[int]:
        self._group_new_slots()
        return sorted(self._by_cluster)

    # -- learning ------------------------------------------------------------
    def learn_many(self, cluster_ids, item_keys, ts, weights) -> None:
        """Add clicks: (n,) cluster ids, item keys, ts (ms) and weights."""
        self.add(make_delta(cluster_ids, item_keys, ts, weights, self.half_life_ms))

    def add(self, delta: CFDelta) -> None:
        """Add a pre-aggregated delta (values relative to ``delta.landmark_ms``)."""
        if not len(delta):
            return
        if self.landmark_ms is None:
            self.landmark_ms = delta.landmark_ms
        if (delta.ts_max - self.landmark_ms) / self.half_life_ms > REBASE_EXPONENT:
            self.rebase(delta.ts_max)
        scale = 2.0 ** ((delta.landmark_ms - self.landmark_ms) / self.half_life_ms)
        slots = self._slots_for(delta.cluster_ids, delta.item_keys)
        np.add.at(self._value, slots, delta.values * scale)
        self.clock_ms = delta.ts_max if self.clock_ms is None else max(self.clock_ms, delta.ts_max)
        if self._n > self._compact_at:
            self.compact()

    def _slots_for(self, cluster_ids: np.ndarray, item_keys: np.ndarray) -> np.ndarray:
        """Slots of (cluster, item) pairs, creating missing ones."""
        n_items = len(self._item_index)
        local = self._item_index.get_or_insert(item_keys)
        if len(self._item_index) > n_items:
            self._item_keys = _grown(self._item_keys, len(self._item_index))
            new = local >= n_items
            self._item_keys[local[new]] = item_keys[new]
        codes = (np.asarray(cluster_ids, dtype=np.int64) << 32) | local
        slots = self._slot.get_or_insert(codes)
        if self._n < len(self._slot):
            new = slots >= self._n  # a new pair may repeat: it writes the same values again
            self._n = len(self._slot)
            for name in ("_cluster", "_item", "_value"):
                setattr(self, name, _grown(getattr(self, name), self._n))
            at, pairs = slots[new], codes[new]
            self._cluster[at] = pairs >> 32
            self._item[at] = pairs & 0xFFFFFFFF
        return slots

    def _group_new_slots(self) -> None:
        """File slots created since the last read under their cluster (lazily, so
        the write path does no per-cluster work)."""
        if self._grouped == self._n:
            return
        slots = np.arange(self._grouped, self._n)
        clusters = self._cluster[slots]
        order = np.argsort(clusters, kind="stable")
        slots, clusters = slots[order], clusters[order]
        cuts = np.flatnonzero(clusters[1:] != clusters[:-1]) + 1
        for part in np.split(slots, cuts):
            cid = int(self._cluster[part[0]])
            old = self._by_cluster.get(cid)
            self._by_cluster[cid] = part if old is None else np.concatenate([old, part])
        self._grouped = self._n

    def rebase(self, landmark_ms: int) -> None:
        """Move the landmark and rescale every stored value (rare)."""
        if self.landmark_ms is not None:
            factor = 2.0 ** ((self.landmark_ms - landmark_ms) / self.half_life_ms)
            self._value[: self._n] *= factor
        self.landmark_ms = int(landmark_ms)

    # -- reading -------------------------------------------------------------
    def _decay_to(self, now_ms: int | None) -> float:
        return decay_to(self, now_ms)

    def _cluster_slots(self, cluster_id: int) -> np.ndarray:
        self._group_new_slots()
        return self._by_cluster.get(cluster_id, _NO_SLOTS)

    def top(self, cluster_id: int, n: int, now_ms: int | None = None):
        """The ``n`` best items of a cluster: item keys (<=n,) int64 and scores
        (<=n,) float64 decayed to ``now_ms`` (default: the newest time seen)."""
        slots = self._cluster_slots(int(cluster_id))
        if not len(slots) or n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        values = self._value[slots]
        if len(slots) > n:
            part = np.argpartition(-values, n)[:n]
            slots, values = slots[part], values[part]
        order = np.argsort(-values, kind="stable")
        keys = self._item_keys[self._item[slots[order]]]
        return keys, values[order] * self._decay_to(now_ms)

    def recommend(
        self,
        cluster_ids: Sequence[int],
        shares: Sequence[float],
        n: int = 10,
        exclude: Iterable[int] = (),
        now_ms: int | None = None,
    ):
        """Blend the clusters' tables by membership share and return the best ``n``
        item keys not in ``exclude``, with their blended decayed scores.

        Each cluster contributes its best ``n + len(exclude)`` items, so an item
        outside every such list is not considered.
        """
        exclude = {int(e) for e in exclude}
        depth = n + len(exclude)
        lists = []
        for cid, share in zip(cluster_ids, shares, strict=True):
            if cid >= 0 and share > 0:
                keys, scores = self.top(int(cid), depth, now_ms)
                lists.append((share, zip(keys.tolist(), scores.tolist(), strict=True)))
        best = blend(lists, n, exclude)
        keys = np.asarray([k for k, _ in best], dtype=np.int64)
        return keys, np.asarray([s for _, s in best], dtype=np.float64)

    def entries(self, now_ms: int | None = None):
        """All entries: cluster ids, item keys (int64) and decayed scores (float64)."""
        n = self._n
        return (
            self._cluster[:n].copy(),
            self._item_keys[self._item[:n]],
            self._value[:n] * self._decay_to(now_ms),
        )

    def cluster_totals(self, now_ms: int | None = None) -> dict[int, float]:
        """Decayed click weight per cluster."""
        clusters, _, scores = self.entries(now_ms)
        uniq, inv = np.unique(clusters, return_inverse=True)
        return dict(zip(uniq.tolist(), np.bincount(inv, weights=scores).tolist(), strict=True))

    # -- bounds --------------------------------------------------------------
    def compact(self, now_ms: int | None = None) -> int:
        """Drop scores below ``prune_below`` and cap each cluster at ``max_items``.

        Returns the number of entries removed.
        """
        before = self._n
        clusters, keys, scores = self.entries(now_ms)
        keep = scores >= self.prune_below
        clusters, keys, stored = clusters[keep], keys[keep], self._value[: self._n][keep]
        order = np.lexsort((-stored, clusters))
        clusters, keys, stored = clusters[order], keys[order], stored[order]
        new_group = np.ones(len(clusters), dtype=bool)
        new_group[1:] = clusters[1:] != clusters[:-1]
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(clusters)), 0))
        rank = np.arange(len(clusters)) - group_start
        capped = rank < self.max_items
        self._load(clusters[capped], keys[capped], stored[capped])
        self._compact_at = max(MIN_COMPACT_ENTRIES, 2 * self._n)
        removed = before - self._n
        if removed:
            logger.debug("cf compaction removed %d of %d entries", removed, before)
        return removed

    def _load(self, clusters: np.ndarray, keys: np.ndarray, stored: np.ndarray) -> None:
        self._reset(max(len(clusters), 1024))
        slots = self._slots_for(clusters, keys)
        self._value[slots] = stored

    def load_entries(self, clusters, item_keys, scores, at_ms: int) -> None:
        """Replace the table by entries whose decayed scores at ``at_ms`` are given
        (the inverse of :meth:`entries`; used to restore a snapshot)."""
        self.landmark_ms = int(at_ms)
        self.clock_ms = int(at_ms)
        self._load(
            np.asarray(clusters, dtype=np.int64),
            np.asarray(item_keys, dtype=np.int64),
            np.asarray(scores, dtype=np.float64),
        )


def decay_to(table, now_ms: int | None) -> float:
    """The factor that brings a forward-decayed ``table``'s stored values (it
    has ``landmark_ms``, ``clock_ms`` and ``half_life_ms``) to ``now_ms``
    (default: its clock); 0 for a table that never learnt anything."""
    if table.landmark_ms is None:
        return 0.0
    now = table.clock_ms if now_ms is None else now_ms
    return 2.0 ** ((table.landmark_ms - now) / table.half_life_ms)


def _grown(arr: np.ndarray, need: int) -> np.ndarray:
    """``arr`` itself if it holds ``need`` entries, else a zero-padded copy twice as long."""
    if need <= len(arr):
        return arr
    out = np.zeros(max(need, 2 * len(arr)), dtype=arr.dtype)
    out[: len(arr)] = arr
    return out
