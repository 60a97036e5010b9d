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

import numba
import numpy as np

from stream.core.items import unit_row_into

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
    users = np.ascontiguousarray(users, dtype=np.int64)
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n = len(users)
    if (
        item_vectors.shape != (n, rows["mean"].shape[1])
        or ts.shape != (n,)
        or weights.shape != (n,)
    ):
        raise ValueError("users, item_vectors, ts and weights must have the same length")
    if n and (users.min() < 0 or users.max() >= len(rows)):
        raise ValueError("users must index rows")
    units = np.zeros((n, item_vectors.shape[1]), dtype=np.float32)
    apply_clicks(
        rows,
        users,
        np.arange(n),
        np.ones(n, dtype=bool),
        item_vectors,
        ts,
        weights,
        np.full(n, -1, dtype=np.int64),
        float(half_life_ms),
        units,
        np.zeros(n, dtype=bool),
        first_units=True,
    )
    return units


def apply_clicks(
    rows, users, item_rows, has_vector, vectors, ts, weights, item_keys, half_life_ms, units, fresh,
    first_units: bool = False,
) -> None:  # fmt: skip
    """Apply a batch of clicks to user records, in order; no validation.

    - ``rows``: (u,) user records (:func:`stream.core.state.user_dtype`), modified in place
    - ``users``: (n,) int64 positions into ``rows``
    - ``item_rows``: (n,) int64 rows of ``vectors`` (n_items, d) float32;
      clicks with ``has_vector`` False only push their item onto ``recent``
    - ``ts`` (n,) int64, ``weights`` (n,) float64, ``item_keys`` (n,) int64
    - out: ``units`` (n, d) float32, the user's unit vector after each click
      (left as it was where the item has no vector, and for a user's first
      click unless ``first_units``: that vector is the item's, whose
      memberships :class:`stream.core.assign.FirstClickCache` keeps); ``fresh``
      (n,) bool, the click was the user's first applied click

    The kernel takes the records whole: a record's ``mean`` is then a
    contiguous array to the compiler, which it cannot know of a field view
    such as ``rows["mean"]`` (so it can vectorise the loop over it).
    """
    _apply_clicks(
        rows, users, item_rows, has_vector, vectors, ts, weights, item_keys, half_life_ms,
        units, fresh, first_units,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _apply_clicks(
    rows, users, item_rows, has_vector, vectors, ts, weights, item_keys, half_life_ms, units, fresh,
    first_units,
):  # fmt: skip
    for e in range(len(users)):
        user = rows[users[e]]
        push_recent(user.recent, item_keys[e])
        if not has_vector[e]:
            continue
        fresh[e] = move_user(user, vectors[item_rows[e]], ts[e], weights[e], half_life_ms)
        if first_units or not fresh[e]:
            unit_row_into(user.mean, units[e])


@numba.njit(cache=True, nogil=True, inline="always")
def push_recent(recent, item_key) -> None:
    """Put ``item_key`` first in a user's ``recent`` (int64, newest first), dropping the oldest."""
    for j in range(len(recent) - 1, 0, -1):
        recent[j] = recent[j - 1]
    recent[0] = item_key


@numba.njit(cache=True, nogil=True, inline="always")
def move_user(user, v, t, w, half_life_ms) -> bool:
    """Apply one click on item vector ``v`` (d,) float32 at ``t`` ms with weight ``w`` to
    one user record (the module's rule); returns whether it was the user's first."""
    first = user.clicks == 0
    t_new = max(user.t_ms, t)
    a = user.weight * 2.0 ** ((user.t_ms - t_new) / half_life_ms)
    b = w * 2.0 ** ((t - t_new) / half_life_ms)
    total = a + b
    frac = b / total if total > 0 else 0.0
    mean = user.mean
    for j in range(len(mean)):
        x = np.float64(mean[j])
        mean[j] = np.float32(x + frac * (np.float64(v[j]) - x))
    user.weight = total
    user.t_ms = t_new
    user.clicks += 1
    return first
