"""Assignment records: the batch encoder against the plain one (orjson of a dict), pinned bytes."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream.core.pipeline import AssignmentChanges
from stream.wire.assignments import (
    assignment_records,
    assignment_value,
    encode_assignments,
    load_kernels,
)
from stream.wire.schemas import validate

M = 3
_ids = st.lists(st.integers(-1, 2**40), min_size=M, max_size=M)
_scores = st.lists(
    st.one_of(
        st.floats(-1.0, 1.0, width=32),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 5e-7, -5e-7, 1e-6, 0.1, 123456.5]),
    ),
    min_size=M,
    max_size=M,
)
_user_ids = st.one_of(
    st.text(min_size=1, max_size=20),  # quotes, backslashes, control characters, any plane
    st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True),
)
_row = st.tuples(_user_ids, _ids, _scores, _ids, _scores, st.integers(0, 253402300799999))


def _columns(rows):
    users = [r[0] for r in rows]
    ids = np.array([r[1] for r in rows], dtype=np.int64).reshape(-1, M)
    scores = np.array([r[2] for r in rows], dtype=np.float32).reshape(-1, M)
    before = np.array([r[3] for r in rows], dtype=np.int64).reshape(-1, M)
    before_scores = np.array([r[4] for r in rows], dtype=np.float32).reshape(-1, M)
    ts = np.array([r[5] for r in rows], dtype=np.int64)
    return users, ids, scores, before, before_scores, ts


@settings(max_examples=300, deadline=None)
@given(st.lists(_row, max_size=12), st.integers(0, 2**31))
@example([('a"b\\c\n', [1, -1, 2], [0.5, 0, 0.25], [-1, -1, -1], [0, 0, 0], 0)], 0)
@example([("u", [3, 4, 5], [-0.0, 1.0, -1.0], [3, 4, 5], [1e-7, -1e-7, 0.9999995], 9)], 7)
def test_batch_values_parse_as_the_plain_encoding_does(rows, version):
    users, ids, scores, before, before_scores, ts = _columns(rows)
    keys, values = encode_assignments(users, ids, scores, before, before_scores, version, ts)
    assert keys == [u.encode("utf-8") for u in users]
    for r, value in enumerate(values):
        want = assignment_value(
            users[r], ids[r], scores[r], before[r], before_scores[r], version, ts[r]
        )
        assert orjson.loads(value) == orjson.loads(want)


def test_scores_are_rounded_to_six_decimals_and_nan_falls_back_to_the_plain_encoder():
    users = ["x", "y"]
    ids = np.array([[1, 2], [1, -1]])
    scores = np.array([[0.12345678, -0.9999996], [math.nan, 0.0]], dtype=np.float64)
    none = np.full((2, 2), -1)
    keys, values = encode_assignments(users, ids, scores, none, np.zeros((2, 2)), 3, [5, 6])
    first = orjson.loads(values[0])
    assert [m["score"] for m in first["memberships"]] == [0.123457, -1.0]
    assert values[0].count(b"0.123457") == 1  # fixed point, not an exponent
    assert orjson.loads(values[1])["memberships"] == [{"cluster_id": 1, "score": None}]
    validate("assignment", first)


def test_values_of_a_large_batch_are_valid_assignments():
    rng = np.random.default_rng(0)
    n = 5000
    ids = rng.integers(-1, 500, (n, 2))
    scores = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    users = [f"user-{i}" for i in rng.integers(0, 10**9, n)]
    _, values = encode_assignments(users, ids, scores, ids[::-1], scores[::-1], 12, np.arange(n))
    for r in range(0, n, 97):
        rec = orjson.loads(values[r])
        validate("assignment", rec)
        assert rec["user_id"] == users[r] and rec["ts"] == r
        assert [m["cluster_id"] for m in rec["memberships"]] == [c for c in ids[r] if c >= 0]


def test_columns_that_disagree_are_refused_not_read_past():
    ids = np.zeros((2, 1), dtype=np.int64)
    wide = np.zeros((2, 8), dtype=np.int64)
    f32 = np.zeros((2, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="disagree"):
        encode_assignments(["a", "b"], ids, f32, wide, wide.astype(np.float32), 1, [1, 2])
    with pytest.raises(ValueError, match="disagree"):
        encode_assignments(["a", "b"], ids, f32, ids, f32, 1, [1])
    with pytest.raises(ValueError, match="disagree"):
        encode_assignments(["a"], ids, f32, ids, f32, 1, [1, 2])


def test_load_kernels_writes_one_record():
    assert load_kernels() == len(assignment_value("warm", [0], [0.0], [0], [0.0], 0, 0))


def test_assignment_records_are_pinned_and_round_trip():
    changes = AssignmentChanges(
        ["u1", 'a"b'], np.array([[4, -1], [2, 7]]),
        np.array([[0.9, 0.0], [0.5, 0.25]], dtype=np.float32),
        np.array([[6, 4], [-1, -1]]), np.array([[0.95, 0.5], [0, 0]], dtype=np.float32),
        np.array([123, 124]),
    )  # fmt: skip
    records = assignment_records(changes, 2, 7, changes.ts)
    # the bytes written before the format moved to stream.wire (the second id
    # needs a JSON escape: the plain encoder writes it)
    assert records == [
        (2, b"u1", b'{"user_id":"u1","memberships":[{"cluster_id":6,"score":0.95},'
         b'{"cluster_id":4,"score":0.5}],"previous":[{"cluster_id":4,"score":0.9}],'
         b'"centres_version":7,"ts":123}'),
        (2, b'a"b', b'{"user_id":"a\\"b","memberships":[],"previous":[{"cluster_id":2,'
         b'"score":0.5},{"cluster_id":7,"score":0.25}],"centres_version":7,"ts":124}'),
    ]  # fmt: skip
    back = [validate("assignment", orjson.loads(value)) for _, _, value in records]
    assert [r["user_id"] for r in back] == ["u1", 'a"b']
    assert [m["cluster_id"] for m in back[0]["memberships"]] == [6, 4]
