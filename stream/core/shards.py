"""The user phase of a batch, split by user over threads.

A batch's clicks move their users' vectors (:mod:`stream.core.vectors`) and
then their memberships (:mod:`stream.core.assign`), each user's clicks in
arrival order. Users do not depend on each other, so the users of a batch
split into shards (user ``u`` goes to shard ``u % shards``, as many shards as
``threads``, at most numba's thread count), each run by one
compiled kernel that holds no GIL. Per shard:

1. apply its clicks, in order, keeping the unit vector after every ranked
   click (one that moved a vector the user had before);
2. score those vectors against every centre: one matrix product (BLAS);
3. the top-m centres of each, then the memberships click by click
   (:func:`stream.core.assign._choose`, the hysteresis rules).

With ``threads`` > 1 the shards run in one numba parallel region (its
threading layer's threads, which spin a while between regions and then
sleep). Each shard calls BLAS itself, so BLAS should run single-threaded (the
worker and the benchmark set it so). ``clusterstream bench core --threads 2``
against ``--threads 1`` measures the gain (figures in BENCHMARKS.md).

The result is the same for any number of threads: every user's clicks see
the same inputs in the same order, and BLAS sums each score over the
dimensions in the same order however the rows are split
(tests/unit/core/test_shards.py compares whole runs).

>>> import numpy as np
>>> from stream.core.centres import CentreSet
>>> from stream.core.state import blank_rows, user_dtype
>>> rows = blank_rows(user_dtype(dim=2, top_m=1, recent=2), 2)
>>> centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
>>> first_ids, first_scores = np.array([[0], [1]]), np.ones((2, 1), dtype=np.float32)
>>> vectors = np.eye(2, dtype=np.float32)
>>> got = user_phase(rows, np.arange(2), np.array([0, 1, 0]), np.array([0, 1, 1]),
...                  np.ones(3, dtype=bool), vectors, np.zeros(3, dtype=np.int64), np.ones(3),
...                  np.array([10, 11, 11]), 1000.0, first_ids, first_scores, centres, 0.0, 0.05)
>>> got.clicks.ids.tolist(), got.primary.round(3).tolist(), got.before.ids.tolist()
([[0], [1], [0]], [1.0, 1.0, 0.707], [[-1], [-1]])
>>> got.after.ids.tolist(), rows["recent"].tolist()
([[0], [1]], [[11, 10], [11, -1]])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np

from stream.core.assign import Memberships, _choose, _id_of, _row_of, drop_repeats
from stream.core.items import unit_row_into
from stream.core.vectors import move_user, push_recent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserPhase:
    """What :func:`user_phase` found.

    - ``clicks``: :class:`Memberships` (n, m) after each click
    - ``primary``: (n,) float32 primary cosine after each click that moved a
      vector, NaN for the others
    - ``before``/``after``: :class:`Memberships` (u, m) of each user as stored
      before the batch and after it
    - ``t_ms``: (u,) int64, each user's newest click time after the batch
    """

    clicks: Memberships
    primary: np.ndarray
    before: Memberships
    after: Memberships
    t_ms: np.ndarray


def user_phase(
    rows, at, users, item_rows, has_vector, vectors, ts, weights, item_keys, half_life_ms,
    first_ids, first_scores, centres, min_score, margin, threads: int = 1,
) -> UserPhase:  # fmt: skip
    """Apply a batch's clicks to its users and assign them, click by click.

    - ``rows``: user records, those at ``at`` (u,) int64 modified in place
      (vectors, recent items, memberships; retired ids are followed through
      the aliases)
    - ``users``: (n,) int64 positions into ``at``; ``item_rows`` (n,) int64
      rows of ``vectors`` (n_items, d) float32; ``has_vector`` (n,) bool
    - ``ts`` (n,) int64 ms, ``weights`` (n,) float64, ``item_keys`` (n,) int64
    - ``first_ids``/``first_scores``: memberships per item row of a user whose
      first click it is (:class:`stream.core.assign.FirstClickCache`)
    - ``threads``: shards run at once (1: all on the calling thread)
    """
    n, u, m = len(users), len(at), rows["cluster_ids"].shape[1]
    out = (
        np.empty((n, m), dtype=np.int64), np.empty((n, m), dtype=np.float32),
        np.full(n, np.nan, dtype=np.float32),
        np.empty((u, m), dtype=np.int64), np.empty((u, m), dtype=np.float32),
        np.empty((u, m), dtype=np.int64), np.empty((u, m), dtype=np.float32),
        np.empty(u, dtype=np.int64),
    )  # fmt: skip
    clicks = (users, item_rows, has_vector, ts, weights, item_keys)
    model = (
        vectors, float(half_life_ms), first_ids, first_scores, centres.vectors,
        centres.row_lookup, centres.ids, float(margin), float(min_score),
    )  # fmt: skip
    if threads > 1:
        _user_shards(min(threads, numba.get_num_threads()), rows, at, clicks, model, out)
    else:
        _user_shard(0, 1, rows, at, clicks, model, out)
    ev_ids, ev_scores, primary, before_ids, before_scores, ids, scores, t_ms = out
    return UserPhase(
        Memberships(ev_ids, ev_scores), primary, Memberships(before_ids, before_scores),
        Memberships(ids, scores), t_ms,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, parallel=True)
def _user_shards(n_shards, rows, at, clicks, model, out):
    """All shards of :func:`user_phase`, one per thread."""
    for shard in numba.prange(n_shards):
        _user_shard(shard, n_shards, rows, at, clicks, model, out)


@numba.njit(cache=True, nogil=True)
def _user_shard(shard, n_shards, rows, at, clicks, model, out):
    """:func:`user_phase` for the users ``u % n_shards == shard`` and their clicks
    (``clicks``, ``model`` and ``out``: its arguments and results, grouped)."""
    users, item_rows, has_vector, ts, weights, item_keys = clicks
    vectors, half_life_ms, first_ids, first_scores, centre_vectors = model[:5]
    row_lookup, centre_ids, margin, min_score = model[5:]
    ev_ids, ev_scores, primary, before_ids, before_scores, after_ids, after_scores, t_ms = out
    n = len(users)
    k, d = centre_vectors.shape
    m = ev_ids.shape[1]
    # 1. vectors, click by click; the unit vectors of the ranked clicks
    fresh = np.zeros(n, dtype=np.bool_)
    units = np.empty((n, d), dtype=np.float32)
    n_ranked = 0
    for e in range(n):
        if users[e] % n_shards != shard:
            continue
        user = rows[at[users[e]]]
        push_recent(user.recent, item_keys[e])
        if has_vector[e]:
            fresh[e] = move_user(user, vectors[item_rows[e]], ts[e], weights[e], half_life_ms)
            if not fresh[e]:
                unit_row_into(user.mean, units[n_ranked])
                n_ranked += 1
    # 2. their cosines to every centre, and the best of each
    if n_ranked:
        scores = np.dot(units[:n_ranked], centre_vectors.T)  # (n_ranked, k) float32
    else:
        scores = np.empty((0, k), dtype=np.float32)
    tops = np.empty((n_ranked, min(m, k)), dtype=np.int64)
    for r in range(n_ranked):
        _top_into(scores[r], tops[r])
    # 3. memberships, click by click, on centre rows (ids in and out)
    cur = np.empty((len(at), m), dtype=np.int64)
    for u in range(shard, len(at), n_shards):
        ids, kept = rows[at[u]].cluster_ids, rows[at[u]].scores
        before_ids[u] = ids
        before_scores[u] = kept
        for j in range(m):
            cur[u, j] = _row_of(row_lookup, ids[j])
        drop_repeats(cur[u], kept)
    before = np.empty(m, dtype=np.int64)
    r = 0
    for e in range(n):
        u = users[e]
        if u % n_shards != shard:
            continue
        kept = rows[at[u]].scores
        if has_vector[e]:
            if fresh[e]:
                for j in range(m):
                    cur[u, j] = _row_of(row_lookup, first_ids[item_rows[e], j])
                    kept[j] = first_scores[item_rows[e], j]
            else:
                before[:] = cur[u]
                _choose(
                    scores[r], tops[r], before, units[r], centre_vectors, margin, min_score,
                    cur[u], kept,
                )  # fmt: skip
                r += 1
            primary[e] = kept[0]
        for j in range(m):
            ev_ids[e, j] = _id_of(centre_ids, cur[u, j])
            ev_scores[e, j] = kept[j]
    for u in range(shard, len(at), n_shards):
        user = rows[at[u]]
        for j in range(m):
            user.cluster_ids[j] = _id_of(centre_ids, cur[u, j])
        after_ids[u] = user.cluster_ids
        after_scores[u] = user.scores
        t_ms[u] = user.t_ms


@numba.njit(cache=True, nogil=True, inline="always")
def _top_into(scores, top):
    """The columns of the ``len(top)`` best ``scores`` (k,) into ``top``, best
    first, ties to the lower column (as :func:`stream.core.assign.top_rows`)."""
    t = len(top)
    filled = 0
    for c in range(len(scores)):
        s = scores[c]
        if filled == t and not s > scores[top[t - 1]]:
            continue
        p = filled if filled < t else t - 1
        while p > 0 and s > scores[top[p - 1]]:
            top[p] = top[p - 1]
            p -= 1
        top[p] = c
        if filled < t:
            filled += 1
