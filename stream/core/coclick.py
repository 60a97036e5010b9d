"""In-cluster item-to-item CF: decayed co-click scores between items.

Two items are co-clicked when one user clicks both within ``window`` of their
recent clicks. Each co-click is counted in the scope of every cluster the user
belongs to (weighted by membership share) and in the global scope ``GLOBAL``,
with forward decay (a score is ``sum(w * 2**((t - L) / h))`` relative to the
table's landmark ``L``, as in :mod:`stream.core.cf`), so old co-clicks fade
without a sweep.

A user's candidates are the neighbours of their recent items: per recent item,
the cluster's co-click row (its members' taste), backed off to the global row
where the cluster's counts are thin (:meth:`CoClickTable.scores`).

Bounded: a row keeps at most ``2 * max_neighbours`` entries (pruned to the
``max_neighbours`` largest when it grows past that).

>>> t = CoClickTable(half_life_ms=1e9, max_neighbours=10)
>>> t.learn([(7, 1.0)], history=[1], item=2, ts=0)
>>> t.learn([(7, 1.0)], history=[1], item=3, ts=0)
>>> t.learn([(8, 1.0)], history=[1], item=3, ts=0)
>>> sorted(t.scores([(7, 1.0)], recent=[1], exclude=set(), prior=0.0).items())
[(2, 0.5), (3, 0.5)]
>>> t.neighbours(GLOBAL, 1)
[(3, 2.0), (2, 1.0)]
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict

#: The scope of co-clicks by every user, whatever their cluster.
GLOBAL = -1

#: Rebase the landmark when a stored value would exceed 2**REBASE_EXPONENT.
REBASE_EXPONENT = 400.0


class CoClickTable:
    """Decayed co-click rows per (scope, item); see the module doc.

    ``half_life_ms``: decay of a co-click; ``max_neighbours``: entries kept per
    row (twice that before a prune); ``refresh``: a cached top list is rebuilt
    when its row's total grew by this factor since.
    """

    def __init__(self, half_life_ms: float, max_neighbours: int = 200, refresh: float = 1.1):
        if half_life_ms <= 0 or max_neighbours < 1:
            raise ValueError("half_life_ms must be > 0 and max_neighbours >= 1")
        self.half_life_ms = float(half_life_ms)
        self.max_neighbours = max_neighbours
        self.refresh = refresh
        self.landmark_ms: int | None = None
        self.latest_ms: int | None = None  # the newest co-click learnt: "now" for the prior
        self.rows: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        self.totals: dict[tuple[int, int], float] = defaultdict(float)
        self._top: dict[tuple[int, int], tuple[float, list[tuple[int, float]]]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _value(self, w: float, ts: int) -> float:
        if self.landmark_ms is None:
            self.landmark_ms = int(ts)
        exponent = (ts - self.landmark_ms) / self.half_life_ms
        if exponent > REBASE_EXPONENT:
            self._rebase(int(ts))
            exponent = 0.0
        return w * math.exp2(exponent)

    def _rebase(self, landmark_ms: int) -> None:
        """Move the landmark forward: every stored value scales by one factor."""
        factor = math.exp2((self.landmark_ms - landmark_ms) / self.half_life_ms)
        for row in self.rows.values():
            for other in row:
                row[other] *= factor
        for key in self.totals:
            self.totals[key] *= factor
        self._top.clear()
        self.landmark_ms = landmark_ms

    def learn(
        self,
        scopes: list[tuple[int, float]],
        history: list[int],
        item: int,
        ts: int,
        weight: float = 1.0,
    ) -> None:
        """Count ``item`` (clicked at ``ts``) as co-clicked with each of ``history``
        (the user's previous items) in each ``(scope, weight)`` and in
        :data:`GLOBAL` with ``weight``."""
        if not history:
            return
        value = self._value(1.0, ts)
        self.latest_ms = int(ts) if self.latest_ms is None else max(self.latest_ms, int(ts))
        for scope, w in [*scopes, (GLOBAL, weight)]:
            if w <= 0:
                continue
            v = w * value
            for other in history:
                if other != item:
                    self._add(scope, other, item, v)
                    self._add(scope, item, other, v)

    def _add(self, scope: int, item: int, other: int, v: float) -> None:
        key = (scope, item)
        row = self.rows[key]
        row[other] = row.get(other, 0.0) + v
        self.totals[key] += v
        if len(row) > 2 * self.max_neighbours:
            keep = heapq.nlargest(self.max_neighbours, row.items(), key=lambda kv: kv[1])
            self.rows[key] = dict(keep)
            self._top.pop(key, None)

    def neighbours(self, scope: int, item: int) -> list[tuple[int, float]]:
        """The row of ``item`` in ``scope``, largest first (at most ``max_neighbours``)."""
        key = (scope, item)
        total = self.totals.get(key, 0.0)
        cached = self._top.get(key)
        if cached is not None and total <= cached[0] * self.refresh:
            return cached[1]
        row = self.rows.get(key)
        if not row:
            return []
        top = heapq.nlargest(self.max_neighbours, row.items(), key=lambda kv: (kv[1], -kv[0]))
        self._top[key] = (total, top)
        return top

    def scores(
        self,
        scopes: list[tuple[int, float]],
        recent: list[int],
        exclude: set[int],
        prior: float = 1.0,
        per_item: int = 50,
        norm: float = 1.0,
        recency: float = 1.0,
    ) -> dict[int, float]:
        """Candidate scores for a user with clusters ``scopes`` [(id, share)] and
        ``recent`` items (newest last): per recent item and scope, the ``per_item``
        best of its row, divided by the row's total to the power ``norm`` (1: a
        share of the row, 0: raw decayed counts, which favour popular items); the
        cluster rows, by share, shrunk towards the global row by ``prior`` (a
        cluster row with total T weighs ``T / (T + prior)``, the global row the
        rest); the i-th of n recent items (oldest first) weighs ``(i / n) ** recency``.

        ``T`` is the row's mass decayed to the newest co-click learnt: stored
        values are relative to the landmark and grow without bound as the
        stream moves on, so the prior would otherwise stop meaning anything
        after a few half-lives.
        """
        out: dict[int, float] = defaultdict(float)
        n = len(recent)
        now = 1.0  # stored units -> decayed to the newest co-click
        if self.landmark_ms is not None and self.latest_ms is not None:
            now = math.exp2((self.landmark_ms - self.latest_ms) / self.half_life_ms)
        for pos, item in enumerate(recent):
            weight = ((pos + 1) / n) ** recency
            left = 1.0
            for scope, share in scopes:
                if share <= 0:
                    continue
                total = self.totals.get((scope, item), 0.0)
                if total <= 0:
                    continue
                trust = total * now / (total * now + prior) if prior > 0 else 1.0
                left -= share * trust
                f = weight * share * trust / total**norm
                for other, c in self.neighbours(scope, item)[:per_item]:
                    if other not in exclude:
                        out[other] += f * c
            total = self.totals.get((GLOBAL, item), 0.0)
            if total > 0 and left > 1e-9:
                f = weight * left / total**norm
                for other, c in self.neighbours(GLOBAL, item)[:per_item]:
                    if other not in exclude:
                        out[other] += f * c
        return out
