"""User vectors: the time-decayed weighted mean of clicked item vectors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.items import unit_rows
from stream.core.state import blank_rows, user_dtype
from stream.core.vectors import DAY_MS, occurrence_rank, update_many

T0 = 1_700_000_000_000
HALF_LIFE = 3_600_000.0  # one hour


def _rows(n_users: int, dim: int) -> np.ndarray:
    return blank_rows(user_dtype(dim, 1, 1), n_users)


def _naive(item_vectors, ts, weights, half_life):
    """The module docstring's formula for one user, in float64."""
    ts = np.asarray(ts, dtype=np.float64)
    big_t = ts.max()
    decay = np.asarray(weights) * np.exp2(-(big_t - ts) / half_life)
    weight = decay.sum()
    mean = (decay[:, None] * np.asarray(item_vectors, dtype=np.float64)).sum(axis=0) / weight
    return mean, weight, int(big_t)


@st.composite
def click_streams(draw, max_users=4, max_clicks=25):
    dim = draw(st.integers(2, 8))
    n_users = draw(st.integers(1, max_users))
    n = draw(st.integers(1, max_clicks))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    vecs = unit_rows(rng.standard_normal((n, dim)))
    # Timestamps over up to ~20 half-lives, unsorted; weights in [0.1, 5].
    span = draw(st.sampled_from([0, 1000, int(HALF_LIFE), int(20 * HALF_LIFE)]))
    ts = T0 + rng.integers(0, span + 1, n)
    weights = rng.uniform(0.1, 5.0, n)
    return n_users, dim, users, vecs, ts, weights


@settings(max_examples=150, deadline=None)
@given(click_streams())
def test_update_many_equals_the_naive_decayed_mean(stream):
    n_users, dim, users, vecs, ts, weights = stream
    rows = _rows(n_users, dim)
    update_many(rows, users, vecs, ts, weights, half_life_ms=HALF_LIFE)
    for u in range(n_users):
        mine = users == u
        if not mine.any():
            assert rows["weight"][u] == 0 and rows["clicks"][u] == 0
            continue
        mean, weight, big_t = _naive(vecs[mine], ts[mine], weights[mine], HALF_LIFE)
        assert rows["t_ms"][u] == big_t
        assert rows["clicks"][u] == mine.sum()
        assert rows["weight"][u] == pytest.approx(weight, rel=1e-9)
        np.testing.assert_allclose(rows["mean"][u], mean, atol=1e-5)
        direction = mean / np.linalg.norm(mean) if np.linalg.norm(mean) > 1e-6 else None
        if direction is not None:
            np.testing.assert_allclose(unit_rows(rows["mean"][u : u + 1])[0], direction, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(click_streams(), st.integers(0, 2**32 - 1))
def test_out_of_order_events_give_the_state_of_sorted_order(stream, seed):
    n_users, dim, users, vecs, ts, weights = stream
    in_order = np.argsort(ts, kind="stable")
    shuffled = np.random.default_rng(seed).permutation(len(ts))
    states = []
    for order in (in_order, shuffled):
        rows = _rows(n_users, dim)
        update_many(rows, users[order], vecs[order], ts[order], weights[order], HALF_LIFE)
        states.append(rows)
    a, b = states
    np.testing.assert_array_equal(a["t_ms"], b["t_ms"])  # the clock never moves back
    np.testing.assert_array_equal(a["clicks"], b["clicks"])
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-5)
    np.testing.assert_allclose(a["weight"], b["weight"], rtol=1e-9)


@settings(max_examples=100, deadline=None)
@given(click_streams(), st.lists(st.integers(1, 10), min_size=1, max_size=6))
def test_repeated_users_in_one_call_are_applied_in_order(stream, cuts):
    n_users, dim, users, vecs, ts, weights = stream
    # One call with repeated users ...
    together = _rows(n_users, dim)
    out = update_many(together, users, vecs, ts, weights, HALF_LIFE)
    # ... equals one click per call, in arrival order, and equals any cut into batches.
    one_by_one = _rows(n_users, dim)
    singles = np.concatenate(
        [
            update_many(
                one_by_one,
                users[i : i + 1],
                vecs[i : i + 1],
                ts[i : i + 1],
                weights[i : i + 1],
                HALF_LIFE,
            )
            for i in range(len(users))
        ]
    )
    assert out.shape == (len(users), dim) and out.dtype == np.float32
    np.testing.assert_array_equal(out, singles)
    assert together.tobytes() == one_by_one.tobytes()
    cut_rows = _rows(n_users, dim)
    bounds = np.unique(np.clip(np.cumsum(cuts), 0, len(users)))
    start = 0
    for stop in [*bounds.tolist(), len(users)]:
        update_many(
            cut_rows,
            users[start:stop],
            vecs[start:stop],
            ts[start:stop],
            weights[start:stop],
            HALF_LIFE,
        )
        start = stop
    assert cut_rows.tobytes() == together.tobytes()


def test_returned_vectors_are_the_state_right_after_each_click():
    rows = _rows(1, 2)
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    out = update_many(
        rows, [0, 0, 0], np.array([e1, e2, e2], np.float32), [T0] * 3, [1.0] * 3, HALF_LIFE
    )
    # Equal weights at one time: the means are e1, (e1+e2)/2, (e1+2 e2)/3, normalised.
    s = np.sqrt(0.5)
    np.testing.assert_allclose(out, [[1, 0], [s, s], [1 / np.sqrt(5), 2 / np.sqrt(5)]], atol=1e-6)
    np.testing.assert_allclose(rows["mean"][0], [1 / 3, 2 / 3], atol=1e-7)


def test_weights_matter():
    e1, e2 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    heavy = _rows(1, 2)
    update_many(heavy, [0, 0], np.array([e1, e2]), [T0, T0], [3.0, 1.0], HALF_LIFE)
    light = _rows(1, 2)
    update_many(light, [0, 0], np.array([e1, e2]), [T0, T0], [1.0, 1.0], HALF_LIFE)
    # By hand: (3 e1 + e2) / 4 and (e1 + e2) / 2.
    np.testing.assert_allclose(heavy["mean"][0], [0.75, 0.25], atol=1e-7)
    np.testing.assert_allclose(light["mean"][0], [0.5, 0.5], atol=1e-7)
    assert heavy["weight"][0] == 4.0 and light["weight"][0] == 2.0


def test_decay_by_hand_one_half_life_apart():
    # A click one half-life old counts half: mean = (0.5 e1 + 1 e2) / 1.5, weight 1.5.
    rows = _rows(1, 2)
    update_many(rows, [0], np.array([[1.0, 0.0]], np.float32), [T0], [1.0], DAY_MS)
    update_many(rows, [0], np.array([[0.0, 1.0]], np.float32), [T0 + DAY_MS], [1.0], DAY_MS)
    np.testing.assert_allclose(rows["mean"][0], [1 / 3, 2 / 3], atol=1e-7)
    assert rows["weight"][0] == pytest.approx(1.5)
    # A late click (half a day before the newest) is decayed to the newest time,
    # and does not move the user's clock back.
    update_many(rows, [0], np.array([[1.0, 0.0]], np.float32), [T0 + DAY_MS // 2], [1.0], DAY_MS)
    assert rows["t_ms"][0] == T0 + DAY_MS
    assert rows["weight"][0] == pytest.approx(1.5 + 2**-0.5)
    assert rows["clicks"][0] == 3


def test_update_many_rejects_mismatched_lengths_and_accepts_empty():
    rows = _rows(2, 2)
    with pytest.raises(ValueError):
        update_many(rows, [0, 1], np.zeros((1, 2), np.float32), [T0, T0], [1.0, 1.0])
    with pytest.raises(ValueError):
        update_many(rows, [0], np.zeros((1, 2), np.float32), [T0, T0], [1.0])
    out = update_many(rows, [], np.zeros((0, 2), np.float32), [], [])
    assert out.shape == (0, 2)
    assert (rows["clicks"] == 0).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 5), max_size=40))
def test_occurrence_rank_counts_earlier_equal_entries(values):
    seen: Counter = Counter()
    expected = []
    for v in values:
        expected.append(seen[v])
        seen[v] += 1
    rank = occurrence_rank(np.array(values, dtype=np.int64))
    assert rank.dtype == np.int64
    assert rank.tolist() == expected
