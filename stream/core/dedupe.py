"""Duplicate clicks: a click whose ``event_id`` the user sent recently is dropped.

Producers retry, so at-least-once delivery upstream is normal. Every user
record keeps the 64-bit hashes of its last ``dedupe_window`` distinct event
ids (``events``, newest first, 0 = empty slot), so the window lives with the
user state: it is flushed in the same WriteBatch and sent to the same
changelog record as the rest of the user, and a restarted or moved partition
knows it. Memory is bounded by ``8 * dedupe_window`` bytes per user.

A duplicate is recognised while its event id is among the user's last
``dedupe_window`` distinct event ids; a copy arriving after more new clicks of
that user than that is applied again. Clicks without event ids (a
:class:`stream.core.clicks.ClickBatch` built without them, as the benchmarks
do) cannot be recognised and are never dropped. Two different event ids of a
user collide (and the later one is dropped) with probability about
``dedupe_window / 2**64`` per click.

>>> rows = np.zeros((2, 3), dtype=np.int64)    # two users' windows of 3
>>> h = event_hashes(["e1", "e2", "e1", "e1", "e3", "e4", "e1"])
>>> drop_seen(rows, np.array([0, 0, 0, 1, 0, 0, 0]), h).tolist()
[False, False, True, False, False, False, False]
>>> bool((rows[0] == h[[6, 5, 4]]).all())       # newest first: e1 had left, so its last copy counted
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def event_hashes(event_ids: Sequence[str]) -> np.ndarray:
    """(n,) int64 hashes of event ids, the same in every process (unlike
    ``hash``): FNV-1a over the code points, then a splitmix64 finish; never 0
    (the empty slot). One encode of the joined ids and one compiled loop.

    >>> a = event_hashes(["3f1c9a4e", "e-0001", ""])
    >>> a.dtype, bool((a != 0).all()), a[0] == event_hashes(["3f1c9a4e"])[0]
    (dtype('int64'), True, np.True_)
    """
    n = len(event_ids)
    if not n:
        return np.zeros(0, dtype=np.int64)
    points = np.frombuffer("".join(event_ids).encode("utf-32-le"), dtype=np.uint32)
    ends = np.cumsum(np.fromiter(map(len, event_ids), dtype=np.int64, count=n))
    out = np.empty(n, dtype=np.int64)
    _hash_runs(points, ends, out)
    return out


@numba.njit(cache=True, nogil=True)
def _hash_runs(points, ends, out):
    start = 0
    for i in range(len(ends)):
        h = _FNV_OFFSET
        for j in range(start, ends[i]):
            h = (h ^ np.uint64(points[j])) * _FNV_PRIME
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
        v = np.int64(h)
        out[i] = v if v != 0 else 1
        start = ends[i]


def drop_seen(windows: np.ndarray, rows: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which clicks are duplicates, in click order; the others enter their
    user's window.

    - ``windows``: (u, w) int64 each user's event hashes, newest first,
      updated in place (a view of the user records' ``events`` field)
    - ``rows``: (n,) int64 the row of ``windows`` of each click's user
    - ``hashes``: (n,) int64 :func:`event_hashes` of the clicks

    Returns (n,) bool, True for a click whose hash is in its user's window
    (as left by the clicks before it).
    """
    dup = np.zeros(len(rows), dtype=np.bool_)
    _drop_seen(windows, np.ascontiguousarray(rows, dtype=np.int64), hashes, dup)
    return dup


@numba.njit(cache=True, nogil=True)
def _drop_seen(windows, rows, hashes, dup):
    w = windows.shape[1]
    for e in range(len(rows)):
        window = windows[rows[e]]
        h = hashes[e]
        seen = False
        for j in range(w):
            if window[j] == h:
                seen = True
                break
        if seen:
            dup[e] = True
            continue
        for j in range(w - 1, 0, -1):
            window[j] = window[j - 1]
        window[0] = h
