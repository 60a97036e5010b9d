"""Assignment of user vectors to the fixed centres: top-m memberships with hysteresis.

Rules, per user:

- the *primary* membership is the centre with the best cosine, except that the
  current primary (after resolving aliases) gets a bonus of ``margin``: a
  challenger must beat it by more than ``margin`` to take its place;
- the other ``top_m - 1`` memberships are the next best centres with a cosine
  of at least ``min_score``; current members get the same ``margin`` bonus, so
  two near-equal centres do not swap in and out;
- a user always has a primary (even below ``min_score``) once centres exist.

Candidates are ranked with one float32 BLAS product (n, d) x (d, k); the
reported scores are then recomputed row by row (``einsum``, no BLAS) for the
chosen centres, so they do not depend on how users were batched.

>>> from stream.core.centres import CentreSet
>>> cs = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
>>> v = np.array([[0.72, 0.69]], dtype=np.float32)
>>> m = assign_many(v, np.array([[1, -1]]), cs, top_m=1, margin=0.05)
>>> m.ids.tolist()          # centre 0 is closer, but not by more than the margin
[[1]]
>>> assign_many(v, np.array([[-1, -1]]), cs, top_m=1).ids.tolist()
[[0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.core.centres import CentreSet
from stream.core.items import unit_rows


@dataclass(frozen=True)
class Memberships:
    """``ids`` (n, m) int64, primary first, -1 = none; ``scores`` (n, m) float32 cosines."""

    ids: np.ndarray
    scores: np.ndarray


def assign_many(
    vectors: np.ndarray,
    current: np.ndarray,
    centres: CentreSet,
    top_m: int = 2,
    min_score: float = 0.0,
    margin: float = 0.05,
) -> Memberships:
    """Memberships of each user after hysteresis.

    - ``vectors``: (n, d) float32 unit user vectors
    - ``current``: (n, m0) int64 current membership ids (primary first, -1 = none;
      retired ids are followed through ``centres.aliases``)
    - returns :class:`Memberships` with ``top_m`` columns
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    current = np.asarray(current, dtype=np.int64)
    if vectors.ndim != 2 or vectors.shape[1] != centres.dim:
        raise ValueError(f"vectors must be (n, {centres.dim})")
    if current.ndim != 2 or current.shape[0] != vectors.shape[0]:
        raise ValueError("current must be (n, m0) with one row per vector")
    if top_m < 1:
        raise ValueError("top_m must be >= 1")
    return _assign(vectors, centres.rows_of(current), centres, top_m, min_score, margin)


def _assign(vectors, current_rows, centres, top_m, min_score, margin) -> Memberships:
    """No validation; ``current_rows`` are centre rows (-1 = none)."""
    n, k = len(vectors), centres.k
    scores = vectors @ centres.vectors.T  # (n, k) float32, modified in place below
    users = np.arange(n)
    chosen = np.full((n, top_m), -1, dtype=np.int64)

    cur_primary = current_rows[:, 0] if current_rows.shape[1] else np.full(n, -1)
    has = np.flatnonzero(cur_primary >= 0)
    scores[has, cur_primary[has]] += margin
    chosen[:, 0] = np.argmax(scores, axis=1)
    scores[has, cur_primary[has]] -= margin
    scores[users, chosen[:, 0]] = -np.inf

    if top_m > 1 and k > 1:
        for j in range(1, current_rows.shape[1]):
            col = current_rows[:, j]
            has = np.flatnonzero(col >= 0)
            scores[has, col[has]] += margin
        for j in range(1, min(top_m, k)):
            best = np.argmax(scores, axis=1)
            chosen[:, j] = best
            scores[users, best] = -np.inf

    valid = chosen >= 0
    rows = np.maximum(chosen, 0)
    exact = np.einsum("nd,nmd->nm", vectors, centres.vectors[rows])
    exact[~valid] = 0.0
    if top_m > 1:
        weak = np.zeros_like(valid)
        weak[:, 1:] = exact[:, 1:] < min_score
        chosen[weak] = -1
        exact[weak] = 0.0
    ids = np.where(chosen >= 0, centres.ids[rows], -1)
    return Memberships(ids, exact.astype(np.float32))


class FirstClickCache:
    """Memberships of a user whose vector is one item's vector: a user's first click.

    A new user's vector after one click is exactly the item's (unit) vector,
    and with no current membership there is no hysteresis, so the assignment
    depends on the item and the centres only. It is computed once per item and
    centre set, and reused for every new user who clicks that item. Entries go
    stale when the centre set changes or the item's vector is set again
    (``ItemCatalog.epoch``).
    """

    def __init__(self):
        self._centres: CentreSet | None = None
        self._ids = np.zeros((0, 0), dtype=np.int64)
        self._scores = np.zeros((0, 0), dtype=np.float32)
        self._epoch = np.zeros(0, dtype=np.int64)

    def lookup(self, items, rows: np.ndarray, centres: CentreSet, top_m: int, min_score: float):
        """:class:`Memberships` (len(rows), top_m) for item ``rows`` of catalogue ``items``."""
        n_items = len(items)
        if self._centres is not centres or self._ids.shape[1] != top_m:
            self._centres = centres
            self._ids = np.full((n_items, top_m), -1, dtype=np.int64)
            self._scores = np.zeros((n_items, top_m), dtype=np.float32)
            self._epoch = np.full(n_items, -1, dtype=np.int64)
        elif len(self._epoch) < n_items:
            grow = max(n_items, 2 * len(self._epoch)) - len(self._epoch)
            self._ids = np.vstack([self._ids, np.full((grow, top_m), -1, dtype=np.int64)])
            self._scores = np.vstack([self._scores, np.zeros((grow, top_m), dtype=np.float32)])
            self._epoch = np.concatenate([self._epoch, np.full(grow, -1, dtype=np.int64)])
        stale = rows[self._epoch[rows] != items.epoch[rows]]
        if len(stale):
            stale = np.unique(stale)
            none = np.full((len(stale), 1), -1, dtype=np.int64)
            got = _assign(unit_rows(items.vectors[stale]), none, centres, top_m, min_score, 0.0)
            self._ids[stale] = got.ids
            self._scores[stale] = got.scores
            self._epoch[stale] = items.epoch[stale]
        return Memberships(self._ids[rows], self._scores[rows])


def membership_changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(n,) bool: primary differs, or the set of other memberships differs.

    >>> membership_changed(np.array([[1, 2], [1, 2], [1, 2]]),
    ...                    np.array([[1, 2], [2, 1], [1, 3]])).tolist()
    [False, True, True]
    """
    before = np.asarray(before)
    after = np.asarray(after)
    primary = before[:, 0] != after[:, 0]
    rest = np.any(np.sort(before[:, 1:], axis=1) != np.sort(after[:, 1:], axis=1), axis=1)
    return primary | rest
