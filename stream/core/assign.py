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
reported scores are then recomputed row by row (float64 sums in a compiled
loop) for the chosen centres, so they do not depend on how users were batched.
Within a batch of clicks, :func:`stream.core.shards.user_phase` applies the
rules click after click (a user's second click sees the memberships left by
the first).

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

import numba
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
    n = len(vectors)
    chosen = np.full((n, top_m), -1, dtype=np.int64)
    exact = np.zeros((n, top_m), dtype=np.float32)
    if centres.k:
        scores = vectors @ centres.vectors.T  # (n, k) float32
        _choose_all(
            scores, top_rows(scores, top_m), np.ascontiguousarray(current_rows, dtype=np.int64),
            vectors, centres.vectors, float(margin), float(min_score), chosen, exact,
        )  # fmt: skip
    return Memberships(_ids_of(centres, chosen), exact)


def _ids_of(centres: CentreSet, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, centres.ids[np.maximum(rows, 0)], -1)


def resolve_memberships(centres: CentreSet, ids: np.ndarray, scores: np.ndarray):
    """Follow aliases of retired ids; drop unknown ids and duplicates (keep the
    first). ``ids`` (n, m) int64, ``scores`` (n, m); returns new arrays (ids,
    float32 scores, 0 where the id was dropped)."""
    rows = centres.rows_of(ids)
    scores = np.array(scores, dtype=np.float32)
    _drop_duplicates(rows, scores)
    return _ids_of(centres, rows), scores


def top_rows(scores: np.ndarray, m: int) -> np.ndarray:
    """(n, min(m, k)) int64: the columns of each row's ``m`` best ``scores`` (n, k),
    best first, ties to the lower column.

    One vectorised ``argmax`` pass per column (the maxima found are masked, then
    put back): cheaper than a compiled scan of each row for small ``m``.

    >>> top_rows(np.array([[0.1, 0.9, 0.9, 0.5]], dtype=np.float32), 3).tolist()
    [[1, 2, 3]]
    """
    n, k = scores.shape
    top = np.empty((n, min(m, k)), dtype=np.int64)
    kept = np.empty(top.shape, dtype=scores.dtype)
    at = np.arange(n)
    for j in range(top.shape[1]):
        best = scores.argmax(axis=1)
        top[:, j] = best
        kept[:, j] = scores[at, best]
        scores[at, best] = -np.inf
    for j in range(top.shape[1]):
        scores[at, top[:, j]] = kept[:, j]
    return top


@numba.njit(cache=True, inline="always")
def _choose(scores, top, current, vector, centre_vectors, margin, min_score, out_rows, out_scores):
    """One user's memberships by the module's rules.

    ``scores`` (k,) float32 ranking cosines; ``top`` (min(m, k),) int64 the rows
    of the best ``scores``, best first (:func:`top_rows`); ``current`` (m0,)
    int64 centre rows (-1 = none); ``vector`` (d,) float32; out: ``out_rows``
    (m,) int64 centre rows, ``out_scores`` (m,) float32 exact cosines. Ties go
    to the lower row. Inlined into its callers, which call it once a click.
    """
    m = len(out_rows)
    out_rows[:] = -1
    out_scores[:] = 0.0
    filled = len(top)
    for j in range(filled):
        best = -1
        for i in range(filled):  # the best row not chosen yet (j < m rows are chosen)
            taken = False
            for t in range(j):
                taken = taken or out_rows[t] == top[i] or out_rows[t] == -2 - top[i]
            if not taken:
                best = top[i]
                break
        best_score = np.float64(scores[best])
        # the bonus: the primary for slot 0, the other current members after it
        for i in range(1 if j else 0, len(current) if j else min(len(current), 1)):
            c = current[i]
            if c < 0:
                continue
            taken = False
            for t in range(j):
                taken = taken or out_rows[t] == c or out_rows[t] == -2 - c
            s = np.float64(scores[c]) + margin
            if not taken and (s > best_score or (s == best_score and c < best)):
                best, best_score = c, s
        exact = 0.0
        for t in range(len(vector)):
            exact += np.float64(vector[t]) * np.float64(centre_vectors[best, t])
        if j > 0 and exact < min_score:
            out_rows[j] = -2 - best  # too weak for a secondary membership: left empty
            continue
        out_rows[j] = best
        out_scores[j] = np.float32(exact)
    for j in range(m):
        if out_rows[j] < -1:
            out_rows[j] = -1


@numba.njit(cache=True)
def _choose_all(
    scores, tops, current, vectors, centre_vectors, margin, min_score, out_rows, out_scores
):  # fmt: skip
    for i in range(len(scores)):
        _choose(
            scores[i], tops[i], current[i], vectors[i], centre_vectors, margin, min_score,
            out_rows[i], out_scores[i],
        )  # fmt: skip


@numba.njit(cache=True)
def _drop_duplicates(rows, scores):
    """:func:`drop_repeats` for every user of ``rows``/``scores`` (n, m)."""
    for u in range(rows.shape[0]):
        drop_repeats(rows[u], scores[u])


@numba.njit(cache=True, inline="always")
def drop_repeats(rows, scores):
    """Empty the repeats of a centre row within one user's memberships ``rows``
    (m,) (two ids aliased to one centre) and the ``scores`` (m,) of empty slots."""
    for j in range(len(rows)):
        for i in range(j):
            if rows[j] == rows[i]:
                rows[j] = -1
        if rows[j] < 0:
            scores[j] = 0.0


@numba.njit(cache=True, inline="always")
def _row_of(row_lookup, cid):
    """The centre row of id ``cid`` (``CentreSet.rows_of`` for one id)."""
    return row_lookup[cid] if 0 <= cid < len(row_lookup) else -1


@numba.njit(cache=True, inline="always")
def _id_of(centre_ids, row):
    """The id of centre ``row`` (-1 for none; :func:`_ids_of` for one row)."""
    return centre_ids[row] if row >= 0 else -1


class FirstClickCache:
    """Memberships of a user whose vector is one item's vector: a user's first click.

    A new user's vector after one click is exactly the item's (unit) vector,
    and with no current membership there is no hysteresis, so the assignment
    depends on the item and the centres only. It is computed once per item and
    centre set, and reused for every new user who clicks that item. Entries go
    stale when the centre set changes or the item's vector is set again
    (``ItemCatalog.epoch``).

    A batch that finds stale entries refreshes other stale items with them,
    up to ``ahead`` items in all: one call per ~``ahead`` items instead of one
    in most batches while the popular items' long tail is first clicked
    (``clusterstream bench core`` counts the calls).
    """

    def __init__(self, ahead: int = 4096):
        self.ahead = ahead
        self._centres: CentreSet | None = None
        self._ids = np.zeros((0, 0), dtype=np.int64)
        self._scores = np.zeros((0, 0), dtype=np.float32)
        self._epoch = np.zeros(0, dtype=np.int64)

    def tables(self, items, rows: np.ndarray, centres: CentreSet, top_m: int, min_score: float):
        """:class:`Memberships` with one row per item of catalogue ``items`` (the
        cache itself, not a copy), up to date at least for item ``rows``."""
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
        stale = _stale_rows(rows, self._epoch, items.epoch, items.has_vector, self.ahead)
        if len(stale):
            none = np.full((len(stale), 1), -1, dtype=np.int64)
            got = _assign(unit_rows(items.vectors[stale]), none, centres, top_m, min_score, 0.0)
            self._ids[stale] = got.ids
            self._scores[stale] = got.scores
            self._epoch[stale] = items.epoch[stale]
        return Memberships(self._ids, self._scores)


@numba.njit(cache=True)
def _stale_rows(rows, cached, epoch, has_vector, ahead):
    """The ``rows`` whose ``cached`` epoch is not ``epoch``; when there are
    any, the catalogue's first other such rows with a vector join them, up to
    ``ahead`` rows in all. Distinct, ascending."""
    out = np.empty(len(rows), dtype=np.int64)
    n = 0
    for r in rows:
        if cached[r] != epoch[r]:
            out[n] = r
            n += 1
    own = np.unique(out[:n])
    if len(own) == 0 or len(own) >= ahead:
        return own
    extra = np.empty(ahead - len(own), dtype=np.int64)
    x = 0
    at = 0  # own[at] is the first of own not below r (both ascending)
    for r in range(len(epoch)):
        if x == len(extra):
            break
        while at < len(own) and own[at] < r:
            at += 1
        if cached[r] != epoch[r] and has_vector[r] and not (at < len(own) and own[at] == r):
            extra[x] = r
            x += 1
    return np.unique(np.concatenate((own, extra[:x])))


def membership_changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(n,) bool: primary differs, or the set of other memberships differs.

    >>> membership_changed(np.array([[1, 2], [1, 2], [1, 2]]),
    ...                    np.array([[1, 2], [2, 1], [1, 3]])).tolist()
    [False, True, True]
    """
    before = np.asarray(before, dtype=np.int64)
    after = np.asarray(after, dtype=np.int64)
    if before.ndim != 2 or before.shape != after.shape:
        raise ValueError("before and after must be (n, m) of the same shape")
    out = np.empty(len(before), dtype=bool)
    _changed(before, after, out)
    return out


@numba.njit(cache=True)
def _changed(before, after, out):
    """Rows whose primary differs or whose other ids differ as multisets (each id
    of ``before`` as often in ``after``: with equal lengths, that is equality)."""
    m = before.shape[1]
    for i in range(len(before)):
        changed = before[i, 0] != after[i, 0]
        for j in range(1, m):
            if changed:
                break
            x = before[i, j]
            count = 0
            for t in range(1, m):
                count += np.int64(before[i, t] == x) - np.int64(after[i, t] == x)
            changed = count != 0
        out[i] = changed
