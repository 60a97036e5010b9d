"""User vectors: a time-decayed weighted mean of the clicked items' vectors.

A click of weight ``w`` at time ``t`` on item vector ``v`` updates the user's
``(mean, weight, t_ms)`` so that, at the newest time ``T`` seen for the user,

    mean = sum_i w_i * 2**(-(T - t_i) / half_life) * v_i / weight
    weight = sum_i w_i * 2**(-(T - t_i) / half_life)

An event older than the user's newest click (out of order) is applied with its
weight decayed to ``T``; ``T`` does not move back. The sum is the same in any
order, so late events are neither dropped nor allowed to rewind the state.

Updates are elementwise per user, so the result does not depend on how clicks
are grouped into batches.

>>> from stream.core.state import blank_rows, user_dtype
>>> rows = blank_rows(user_dtype(dim=2, top_m=1, recent=1), 1)
>>> day = 86_400_000
>>> units = update_many(rows, np.array([0]), np.array([[1.0, 0.0]], dtype=np.float32),
...                     np.array([0]), np.array([1.0]), half_life_ms=day)
>>> units = update_many(rows, np.array([0]), np.array([[0.0, 1.0]], dtype=np.float32),
...                     np.array([day]), np.array([1.0]), half_life_ms=day)
>>> rows["mean"].round(4).tolist(), float(rows["weight"][0])
([[0.3333, 0.6667]], 1.5)
>>> units.round(4).tolist()
[[0.4472, 0.8944]]
"""

from __future__ import annotations

import numpy as np

from stream.core.items import unit_rows

DAY_MS = 86_400_000
DEFAULT_HALF_LIFE_MS = 7 * DAY_MS


def occurrence_rank(index: np.ndarray) -> np.ndarray:
    """(n,) int64: how many earlier entries of ``index`` hold the same value.

    Splits a batch into rounds in which each user appears at most once, so a
    user's clicks are applied in their arrival order.

    >>> occurrence_rank(np.array([3, 1, 3, 3, 1])).tolist()
    [0, 0, 1, 2, 1]
    """
    index = np.asarray(index)
    n = len(index)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    sorted_idx = index[order]
    starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


def update_many(
    rows: np.ndarray,
    users: np.ndarray,
    item_vectors: np.ndarray,
    ts: np.ndarray,
    weights: np.ndarray,
    half_life_ms: float = DEFAULT_HALF_LIFE_MS,
) -> np.ndarray:
    """Apply clicks to user records in place and return the new unit vectors.

    - ``rows``: (u,) user records (:func:`stream.core.state.user_dtype`), modified
    - ``users``: (n,) int64 positions into ``rows``; a user may repeat, clicks
      are then applied in order
    - ``item_vectors``: (n, d) float32 unit vectors of the clicked items
    - ``ts``: (n,) int64 epoch ms; ``weights``: (n,) float64 > 0
    - returns (n, d) float32: the user's unit vector right after each click
    """
    users = np.asarray(users, dtype=np.int64)
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    ts = np.asarray(ts, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    n = len(users)
    if item_vectors.shape[0] != n or ts.shape != (n,) or weights.shape != (n,):
        raise ValueError("users, item_vectors, ts and weights must have the same length")
    out = np.empty((n, rows["mean"].shape[1]), dtype=np.float32)
    rank = occurrence_rank(users)
    for r in range(int(rank.max()) + 1 if n else 0):
        ev = np.flatnonzero(rank == r)
        out[ev] = _update_unique(
            rows, users[ev], item_vectors[ev], ts[ev], weights[ev], half_life_ms
        )
    return out


def _update_unique(rows, users, item_vectors, ts, weights, half_life_ms) -> np.ndarray:
    """One click per user (``users`` unique); no validation."""
    t_old = rows["t_ms"][users]
    w_old = rows["weight"][users]
    t_new = np.maximum(t_old, ts)
    a = w_old * np.exp2((t_old - t_new) / half_life_ms)
    b = weights * np.exp2((ts - t_new) / half_life_ms)
    total = a + b
    frac = np.divide(b, total, out=np.zeros_like(b), where=total > 0)
    mean = rows["mean"][users].astype(np.float64)
    mean += frac[:, None] * (item_vectors.astype(np.float64) - mean)
    rows["mean"][users] = mean
    rows["weight"][users] = total
    rows["t_ms"][users] = t_new
    rows["clicks"][users] += 1
    return unit_rows(rows["mean"][users])
