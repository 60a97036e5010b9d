"""Co-click pairs of a batch: what feeds every co-click table (:mod:`stream.core.coclick`).

A click of item ``b`` co-counts with each of its user's ``window`` previous
items ``a`` (the user's recent items before the batch, then the batch's
earlier clicks of the same user, in click order; ``a == b`` is skipped): once
in every cluster the click was counted for in the CF, with that increment's
weight (membership share times click weight), and once in the global scope
:data:`GLOBAL` with the click's weight. Undirected (both items co-clicked
alike), a pair is stored once, its two items in ascending order, and a table
adds it both ways; ``directed`` (what users click *after* an item, as news
readers go from one story to the next), it is stored as (``a``, ``b``), the
earlier item first, and a table adds it that way only.

:func:`pair_increments` lists them per click (:class:`PairIncrements`), and
:func:`make_pair_delta` sums them per ``(scope, a, b)`` with forward decay
against the newest click, as :func:`stream.core.cf.make_delta` does for the
CF. The worker sends the sums to each scope's table owner inside its
cf-delta record; ``eval`` adds them to its own table: one code path.

>>> inc = pair_increments(
...     recent_before=np.array([[7, -1]]), user_pos=np.array([0, 0]),
...     item_keys=np.array([8, 9]), click_weights=np.array([1.0, 1.0]),
...     inc_clicks=np.array([0, 1]), inc_clusters=np.array([3, 3]),
...     inc_weights=np.array([0.5, 0.5]), window=2,
... )
>>> sorted(zip(inc.scopes.tolist(), inc.a.tolist(), inc.b.tolist(), inc.weights.tolist()))
[(-1, 7, 8, 1.0), (-1, 7, 9, 1.0), (-1, 8, 9, 1.0), (3, 7, 8, 0.5), (3, 7, 9, 0.5), (3, 8, 9, 0.5)]
>>> d = make_pair_delta(inc, ts=np.array([0, 1000]), half_life_ms=1000.0)
>>> len(d), d.landmark_ms, d.values.tolist()[:2]
(6, 1000, [0.25, 0.5])
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from stream.core.hashmap import _home, _table_bits

#: The scope of co-clicks by every user, whatever their cluster.
GLOBAL = -1

_Z = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class PairIncrements:
    """A batch's co-click increments, one per (click, scope, previous item):
    ``clicks`` (k,) int64 click index in the batch, ``scopes`` (k,) int64
    (cluster id or :data:`GLOBAL`), ``a``, ``b`` (k,) int64 item keys (``a`` < ``b``,
    or ``a`` clicked before ``b`` when directed),
    ``weights`` (k,) float64 (not decayed)."""

    clicks: np.ndarray
    scopes: np.ndarray
    a: np.ndarray
    b: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.clicks)

    @classmethod
    def empty(cls) -> PairIncrements:
        return cls(_Z, _Z, _Z, _Z, np.zeros(0))

    def select(self, sel) -> PairIncrements:
        """The increments at ``sel`` (a boolean mask or indexes)."""
        return PairIncrements(
            self.clicks[sel], self.scopes[sel], self.a[sel], self.b[sel], self.weights[sel]
        )

    @classmethod
    def concat(cls, parts: list[tuple[int, PairIncrements]]) -> PairIncrements:
        """One batch's increments from its pieces' ``[(first click, increments)]``."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([start + p.clicks for start, p in parts]),
            *(np.concatenate([getattr(p, f) for _, p in parts]) for f in ("scopes", "a", "b")),
            np.concatenate([p.weights for _, p in parts]),
        )


@dataclass(frozen=True)
class PairDelta:
    """Summed co-click increments: ``scopes``, ``a``, ``b`` (k,) int64,
    ``values`` (k,) float64 relative to ``landmark_ms``; ``ts_min``/``ts_max``
    the oldest and newest click that contributed (epoch ms)."""

    scopes: np.ndarray
    a: np.ndarray
    b: np.ndarray
    values: np.ndarray
    landmark_ms: int
    ts_min: int
    ts_max: int

    def __len__(self) -> int:
        return len(self.scopes)

    @classmethod
    def empty(cls) -> PairDelta:
        return cls(_Z, _Z, _Z, np.zeros(0), 0, 0, 0)

    def select(self, sel) -> PairDelta:
        """The entries at ``sel`` (a boolean mask or indexes)."""
        return PairDelta(
            self.scopes[sel], self.a[sel], self.b[sel], self.values[sel],
            self.landmark_ms, self.ts_min, self.ts_max,
        )  # fmt: skip


def pair_increments(
    recent_before, user_pos, item_keys, click_weights, inc_clicks, inc_clusters, inc_weights,
    window: int, directed: bool = False,
) -> PairIncrements:  # fmt: skip
    """The batch's co-click increments (see the module doc), in click order.

    ``recent_before``: (u, r) int64, the batch's users' recent items before it,
    newest first, -1 empty; ``user_pos``, ``item_keys``: (n,) int64 per click
    (its user's row, its item); ``click_weights``: (n,) float64;
    ``inc_clicks``, ``inc_clusters`` (k,) int64 and ``inc_weights`` (k,)
    float64: the CF increments (click index, cluster, weight) in click order.
    """
    item_keys = np.ascontiguousarray(item_keys, dtype=np.int64)
    if not len(item_keys) or window < 1:
        return PairIncrements.empty()
    got = _increments(
        np.ascontiguousarray(recent_before, dtype=np.int64),
        np.ascontiguousarray(user_pos, dtype=np.int64),
        item_keys,
        np.ascontiguousarray(click_weights, dtype=np.float64),
        np.ascontiguousarray(inc_clicks, dtype=np.int64),
        np.ascontiguousarray(inc_clusters, dtype=np.int64),
        np.ascontiguousarray(inc_weights, dtype=np.float64),
        int(window),
        bool(directed),
    )
    count = got[-1]
    return PairIncrements(*(a[:count] for a in got[:-1]))


def make_pair_delta(inc: PairIncrements, ts, half_life_ms: float) -> PairDelta:
    """Sum ``inc`` per ``(scope, a, b)``, each increment decayed from its
    click's time (``ts``: the batch's (n,) int64 click times) to the newest
    of them, the delta's landmark. Entries come out in order of first appearance."""
    if not len(inc):
        return PairDelta.empty()
    t = np.asarray(ts, dtype=np.int64)[inc.clicks]
    landmark = int(t.max())
    values = inc.weights * np.exp2((t - landmark) / float(half_life_ms))
    k = len(inc)
    scopes, a, b = np.empty(k, np.int64), np.empty(k, np.int64), np.empty(k, np.int64)
    sums = np.empty(k, np.float64)
    count = _sum_triples(inc.scopes, inc.a, inc.b, values, scopes, a, b, sums)
    return PairDelta(
        scopes[:count], a[:count], b[:count], sums[:count], landmark, int(t.min()), landmark
    )


@numba.njit(cache=True)
def _increments(
    recent_before, user_pos, item_keys, click_weights, inc_clicks, inc_clusters, inc_weights,
    window, directed,
):  # fmt: skip
    n_users = recent_before.shape[0]
    # a user's history as the batch goes on: its last ``window`` items, oldest first
    hist = np.full((n_users, window), -1, dtype=np.int64)
    size = np.zeros(n_users, dtype=np.int64)
    for u in range(n_users):
        picked = 0
        for j in range(recent_before.shape[1]):
            if recent_before[u, j] >= 0 and picked < window:
                picked += 1
        k = picked
        for j in range(recent_before.shape[1]):
            if recent_before[u, j] >= 0 and k > 0:
                k -= 1
                hist[u, k] = recent_before[u, j]
        size[u] = picked
    n = len(item_keys)
    inc_start = np.zeros(n + 1, dtype=np.int64)
    for e in inc_clicks:
        inc_start[e + 1] += 1
    for e in range(n):
        inc_start[e + 1] += inc_start[e]
    cap = window * (len(inc_clicks) + n)
    clicks = np.empty(cap, dtype=np.int64)
    scopes = np.empty(cap, dtype=np.int64)
    first = np.empty(cap, dtype=np.int64)
    then = np.empty(cap, dtype=np.int64)
    weights = np.empty(cap, dtype=np.float64)
    count = 0
    for e in range(n):
        u, item = user_pos[e], item_keys[e]
        for h in range(size[u]):
            other = hist[u, h]
            if other == item:
                continue
            a, b = (other, item) if directed else (min(other, item), max(other, item))
            for i in range(inc_start[e], inc_start[e + 1] + 1):
                if i < inc_start[e + 1]:
                    scope, w = inc_clusters[i], inc_weights[i]
                else:
                    scope, w = GLOBAL, click_weights[e]
                if w <= 0:
                    continue
                clicks[count], scopes[count], first[count], then[count] = e, scope, a, b
                weights[count] = w
                count += 1
        if size[u] < window:
            hist[u, size[u]] = item
            size[u] += 1
        else:
            for h in range(window - 1):
                hist[u, h] = hist[u, h + 1]
            hist[u, window - 1] = item
    return clicks, scopes, first, then, weights, count


@numba.njit(cache=True)
def _sum_triples(scopes, a, b, values, out_s, out_a, out_b, out_sum):
    """Sum ``values`` per distinct (scope, a, b) in one open-addressing pass;
    returns how many distinct triples (written to the ``out_`` arrays in order
    of first appearance)."""
    bits = _table_bits(len(scopes))
    mask = (1 << bits) - 1
    slot_of = np.full(1 << bits, -1, dtype=np.int64)
    count = 0
    for i in range(len(scopes)):
        h = (a[i] * np.int64(1_000_003) ^ b[i]) * np.int64(31) ^ scopes[i]
        p = _home(h, bits)
        while slot_of[p] >= 0:
            j = slot_of[p]
            if out_s[j] == scopes[i] and out_a[j] == a[i] and out_b[j] == b[i]:
                break
            p = (p + 1) & mask
        if slot_of[p] < 0:
            slot_of[p] = count
            out_s[count], out_a[count], out_b[count] = scopes[i], a[i], b[i]
            out_sum[count] = 0.0
            count += 1
        out_sum[slot_of[p]] += values[i]
    return count
