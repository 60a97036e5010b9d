"""Assignment records (``schemas/assignment.schema.json``), a batch at a time.

The hot path writes one assignment record per user whose memberships changed:
on a stream of new users that is about one per click, so a compiled loop
writes the whole batch into one byte buffer, which is then cut into values
(formatting each value in Python costs several times more).

The values parse to exactly what :func:`assignment_value` (``orjson.dumps`` of
a dict, the reference) writes, which a property test checks:

- scores (float32, as the core keeps them) are rounded to 6 decimals and
  written in fixed point without trailing zeros (``0.5``, ``1.0``,
  ``-0.25``), which parses to that rounded float (a rounded ``-0.0`` is
  written ``0.0``, equal to it). For a float32 score ``x * 1e6`` is exact in
  float64, so numpy's rounding agrees with Python's ``round`` there; float64
  scores may differ from the reference on a tie in the 7th decimal;
- memberships with an id < 0 (empty slots) are left out;
- a user id holding a character JSON must escape (quote, backslash, control
  characters) and a row with a score that is not finite or not below 1e9 in
  size are written by the reference instead (rare: the compiled path writes
  UTF-8 bytes as they are, and its fixed point is exact below about 9e9).

>>> keys, values = encode_assignments(
...     ["ann"], np.array([[3, -1]]), np.array([[0.5, 0.0]], dtype=np.float32),
...     np.array([[-1, -1]]), np.zeros((1, 2), dtype=np.float32), 7, np.array([1000]),
... )
>>> keys, values
([b'ann'], [b'{"user_id":"ann","memberships":[{"cluster_id":3,"score":0.5}],"previous":[],"centres_version":7,"ts":1000}'])
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import orjson

from stream.core.pipeline import AssignmentChanges

_ROUND = 6  # decimals kept of a score


def _text(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8)


# the constant pieces of a value, in the order they are written
_OPEN = _text('{"user_id":"')
_MEMBERSHIPS = _text('","memberships":')
_PREVIOUS = _text(',"previous":')
_VERSION = _text(',"centres_version":')
_TS = _text(',"ts":')
_CLUSTER = _text('{"cluster_id":')
_SCORE = _text(',"score":')


def assignment_value(
    user_id: str, ids, scores, before_ids, before_scores, version: int, ts: int
) -> bytes:
    """One value the plain way: ``ids``/``scores`` (m,) after, ``before_*`` (m,)
    before; scores rounded to 6 decimals (the reference of the batch encoder)."""

    def members(ids, scores):
        return [
            {"cluster_id": int(c), "score": round(float(s), _ROUND)}
            for c, s in zip(ids, scores, strict=True)
            if c >= 0
        ]

    return orjson.dumps(
        {
            "user_id": user_id,
            "memberships": members(ids, scores),
            "previous": members(before_ids, before_scores),
            "centres_version": int(version),
            "ts": int(ts),
        }
    )


def encode_assignments(
    user_ids: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    before_ids: np.ndarray,
    before_scores: np.ndarray,
    version: int,
    ts: np.ndarray,
) -> tuple[list[bytes], list[bytes]]:
    """Keys (user ids in UTF-8) and values of ``n`` assignment records.

    - ``ids``/``before_ids``: (n, m) int64 memberships after/before, -1 = none
    - ``scores``/``before_scores``: (n, m) float32 cosines
    - ``version``: the centre set's version; ``ts``: (n,) int64 epoch ms

    Raises ``ValueError`` when the shapes do not agree (the compiled loop
    checks no bounds).
    """
    keys = [u.encode("utf-8") for u in user_ids]
    n = len(keys)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    before_ids = np.ascontiguousarray(before_ids, dtype=np.int64)
    scores = np.round(np.asarray(scores, dtype=np.float64), _ROUND)
    before_scores = np.round(np.asarray(before_scores, dtype=np.float64), _ROUND)
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    shape = ids.shape
    if not (
        len(shape) == 2
        and shape[0] == n
        and before_ids.shape == scores.shape == before_scores.shape == shape
        and ts.shape == (n,)
    ):
        raise ValueError(
            f"assignment columns disagree: {n} ids, ids {shape}, before {before_ids.shape}, "
            f"scores {scores.shape}, before scores {before_scores.shape}, ts {ts.shape}"
        )
    if n == 0:
        return [], []
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, keys), dtype=np.int64, count=n), out=starts[1:])
    blob = np.frombuffer(b"".join(keys), dtype=np.uint8)
    m = ids.shape[1]
    # every piece has a fixed bound: 20 characters an integer, 17 a score
    out = np.empty(len(blob) + n * (128 + 2 * m * 72), dtype=np.uint8)
    ends = np.empty(n, dtype=np.int64)
    plain = np.empty(n, dtype=np.bool_)
    _write(blob, starts, ids, scores, before_ids, before_scores, int(version), ts, out, ends, plain)
    raw = out[: ends[-1]].tobytes()
    cuts = ends.tolist()
    values = [raw[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    for r in np.flatnonzero(~plain).tolist():
        values[r] = assignment_value(
            user_ids[r], ids[r], scores[r], before_ids[r], before_scores[r], version, ts[r]
        )
    return keys, values


def assignment_records(
    changes: AssignmentChanges, partition: int, centres_version: int, ts_ms: Sequence[int]
) -> list[tuple[int, bytes, bytes]]:
    """One record ``(partition, key, value)`` per changed user (key user_id),
    co-partitioned with clicks; the values are written a batch at a time
    (:func:`encode_assignments`)."""
    keys, values = encode_assignments(
        changes.user_ids, changes.ids, changes.scores, changes.before_ids,
        changes.before_scores, centres_version, np.asarray(ts_ms),
    )  # fmt: skip
    return [(partition, key, value) for key, value in zip(keys, values, strict=True)]


def load_kernels() -> int:
    """Load (or compile) the compiled loop before the first real batch, as
    :func:`stream.core.pipeline.warm_up` does for the core; returns the
    bytes written for one record."""
    one = np.zeros((1, 1), dtype=np.int64)
    _, values = encode_assignments(["warm"], one, one.astype(np.float32), one, one, 0, [0])
    return len(values[0])


@numba.njit(cache=True)
def _put(out, pos, text):
    for i in range(len(text)):
        out[pos + i] = text[i]
    return pos + len(text)


@numba.njit(cache=True)
def _put_int(out, pos, value):
    """Decimal digits of an int64 (|value| < 2**63)."""
    if value < 0:
        out[pos] = 45  # -
        pos += 1
        value = -value
    digits = 1
    rest = value
    while rest >= 10:
        rest //= 10
        digits += 1
    for i in range(digits - 1, -1, -1):
        out[pos + i] = 48 + value % 10
        value //= 10
    return pos + digits


@numba.njit(cache=True)
def _put_score(out, pos, x):
    """``x`` (already rounded to 6 decimals, |x| < 1e9) in fixed point."""
    micro = np.int64(np.round(abs(x) * 1e6))
    if x < 0 and micro > 0:
        out[pos] = 45  # -
        pos += 1
    pos = _put_int(out, pos, micro // 1_000_000)
    out[pos] = 46  # .
    pos += 1
    frac = micro % 1_000_000
    width = 6
    while width > 1 and frac % 10 == 0:
        frac //= 10
        width -= 1
    for i in range(width - 1, -1, -1):
        out[pos + i] = 48 + frac % 10
        frac //= 10
    return pos + width


@numba.njit(cache=True)
def _put_members(out, pos, ids, scores):
    out[pos] = 91  # [
    pos += 1
    first = True
    for j in range(len(ids)):
        if ids[j] < 0:
            continue
        if not first:
            out[pos] = 44  # ,
            pos += 1
        first = False
        pos = _put(out, pos, _CLUSTER)
        pos = _put_int(out, pos, ids[j])
        pos = _put(out, pos, _SCORE)
        pos = _put_score(out, pos, scores[j])
        out[pos] = 125  # }
        pos += 1
    out[pos] = 93  # ]
    return pos + 1


@numba.njit(cache=True)
def _plain(blob, a, b, scores, before_scores):
    """The compiled path writes this row right: no byte of the id needs a JSON
    escape, every score is finite and small."""
    for i in range(a, b):
        c = blob[i]
        if c == 34 or c == 92 or c < 32:  # " \ control
            return False
    for j in range(len(scores)):
        if not (abs(scores[j]) < 1e9 and abs(before_scores[j]) < 1e9):  # NaN fails too
            return False
    return True


@numba.njit(cache=True)
def _write(blob, starts, ids, scores, before_ids, before_scores, version, ts, out, ends, plain):
    pos = 0
    for r in range(len(ts)):
        a, b = starts[r], starts[r + 1]
        plain[r] = _plain(blob, a, b, scores[r], before_scores[r])
        if not plain[r]:
            ends[r] = pos  # an empty value, replaced by the caller
            continue
        pos = _put(out, pos, _OPEN)
        for i in range(a, b):
            out[pos] = blob[i]
            pos += 1
        pos = _put(out, pos, _MEMBERSHIPS)
        pos = _put_members(out, pos, ids[r], scores[r])
        pos = _put(out, pos, _PREVIOUS)
        pos = _put_members(out, pos, before_ids[r], before_scores[r])
        pos = _put(out, pos, _VERSION)
        pos = _put_int(out, pos, version)
        pos = _put(out, pos, _TS)
        pos = _put_int(out, pos, ts[r])
        out[pos] = 125  # }
        ends[r] = pos + 1
        pos += 1
