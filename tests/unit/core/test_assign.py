"""Top-m assignment with hysteresis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stream.core.assign import assign_many, membership_changed
from stream.core.centres import CentreSet
from stream.core.items import unit_rows

BAND = 1e-5  # float32 ranking vs float64 check: stay away from exact ties


@st.composite
def scenes(draw):
    k = draw(st.integers(2, 7))
    dim = draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.permutation(50)[:k]
    cs = CentreSet.create(rng.standard_normal((k, dim)), ids=ids, created_at_ms=0)
    v = unit_rows(rng.standard_normal((1, dim)))
    margin = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5]))
    primary_row = draw(st.integers(-1, k - 1))
    return cs, v, margin, primary_row


@settings(max_examples=200, deadline=None)
@given(scenes())
def test_primary_never_flaps_inside_the_margin(scene):
    cs, v, margin, p = scene
    s = (v.astype(np.float64) @ cs.vectors64.T)[0]
    current = np.array([[cs.ids[p] if p >= 0 else -1]])
    got = assign_many(v, current, cs, top_m=1, margin=margin)
    primary = int(got.ids[0, 0])
    if p < 0:
        order = np.sort(s)[::-1]
        assume(order[0] - order[1] > BAND)
        assert primary == cs.ids[int(np.argmax(s))]
        return
    others = np.delete(s, p)
    best_other = others.max()
    assume(abs(best_other - (s[p] + margin)) > BAND)
    if best_other < s[p] + margin:
        assert primary == cs.ids[p], "primary left although no centre beat it by the margin"
    else:
        order = np.sort(s)[::-1]
        assume(order[0] - order[1] > BAND)
        assert primary == cs.ids[int(np.argmax(s))], "a challenger beyond the margin must win"
    assert got.scores[0, 0] == pytest.approx(s[cs.rows_of(got.ids[0])[0]], abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(scenes(), st.integers(1, 8), st.sampled_from([-1.0, 0.0, 0.2, 0.5]))
def test_top_m_ordering_and_min_score_without_history(scene, top_m, min_score):
    cs, v, _, _ = scene
    s = (v.astype(np.float64) @ cs.vectors64.T)[0]
    order = np.argsort(-s, kind="stable")
    assume(np.all(np.abs(np.diff(s[order])) > BAND))
    got = assign_many(v, np.full((1, 1), -1), cs, top_m=top_m, min_score=min_score)
    assert got.ids.shape == got.scores.shape == (1, top_m)
    assert got.ids.dtype == np.int64 and got.scores.dtype == np.float32
    expected = []
    for j, row in enumerate(order[:top_m].tolist()):
        keep = j == 0 or s[row] >= min_score  # a user always has a primary
        expected.append(int(cs.ids[row]) if keep else -1)
    expected += [-1] * (top_m - len(expected))
    assert got.ids[0].tolist() == expected
    for j, cid in enumerate(got.ids[0].tolist()):
        if cid < 0:
            assert got.scores[0, j] == 0.0
        else:
            assert got.scores[0, j] == pytest.approx(s[cs.rows_of(np.array([cid]))[0]], abs=1e-6)


def test_secondary_membership_also_has_hysteresis():
    # Centres at angles; the user sits nearest P, then X (slightly), then S.
    cs = CentreSet.create([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ids=[10, 20, 30], created_at_ms=0)
    v = unit_rows(np.array([[1.0, 0.50, 0.48]]))
    # Without history: 10 primary, 20 secondary.
    assert assign_many(v, [[-1, -1]], cs, top_m=2).ids.tolist() == [[10, 20]]
    # Currently [10, 30]: 20 beats 30 by less than the margin, so 30 stays.
    assert assign_many(v, [[10, 30]], cs, top_m=2, margin=0.05).ids.tolist() == [[10, 30]]
    # With no margin, the better one takes the slot.
    assert assign_many(v, [[10, 30]], cs, top_m=2, margin=0.0).ids.tolist() == [[10, 20]]


def test_retired_ids_in_current_are_resolved_through_aliases():
    cs = CentreSet.create([[1, 0], [0, 1]], ids=[1, 2], aliases={7: 2, 8: 1}, created_at_ms=0)
    v = np.array([[0.72, 0.69]], dtype=np.float32)  # centre 1 is better by ~0.03
    # Current primary 7 is a retired id of 2: 2 gets the margin and stays.
    assert assign_many(v, [[7]], cs, top_m=1, margin=0.05).ids.tolist() == [[2]]
    assert assign_many(v, [[2]], cs, top_m=1, margin=0.05).ids.tolist() == [[2]]
    # Unknown ids are like no history.
    assert assign_many(v, [[99]], cs, top_m=1, margin=0.05).ids.tolist() == [[1]]
    # Output never holds retired ids.
    out = assign_many(v, [[8, 7]], cs, top_m=2).ids
    assert set(out.ravel().tolist()) <= {1, 2}


def test_a_user_always_gets_a_primary_even_below_min_score():
    cs = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
    v = np.array([[-0.6, -0.8]], dtype=np.float32)
    got = assign_many(v, [[-1, -1]], cs, top_m=2, min_score=0.5)
    assert got.ids.tolist() == [[0, -1]]
    assert got.scores[0, 0] == pytest.approx(-0.6, abs=1e-6)


def test_top_m_larger_than_k_fills_with_minus_one():
    cs = CentreSet.create([[1, 0]], ids=[4], created_at_ms=0)
    got = assign_many(np.array([[0.0, 1.0]], np.float32), [[-1]], cs, top_m=3, min_score=-1)
    assert got.ids.tolist() == [[4, -1, -1]]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_scores_do_not_depend_on_batching(seed):
    rng = np.random.default_rng(seed)
    cs = CentreSet.create(rng.standard_normal((6, 8)), created_at_ms=0)
    v = unit_rows(rng.standard_normal((30, 8)))
    cur = rng.integers(-1, 6, (30, 2))
    batch = assign_many(v, cur, cs, top_m=3)
    for i in range(30):
        one = assign_many(v[i : i + 1], cur[i : i + 1], cs, top_m=3)
        if one.ids[0].tolist() == batch.ids[i].tolist():
            assert one.scores[0].tobytes() == batch.scores[i].tobytes()


def test_assign_many_validates_inputs():
    cs = CentreSet.create(np.eye(3), created_at_ms=0)
    with pytest.raises(ValueError):
        assign_many(np.ones((2, 2), np.float32), np.full((2, 1), -1), cs)
    with pytest.raises(ValueError):
        assign_many(np.ones((2, 3), np.float32), np.full((3, 1), -1), cs)
    with pytest.raises(ValueError):
        assign_many(np.ones((2, 3), np.float32), np.full((2, 1), -1), cs, top_m=0)


MEMBERSHIPS = st.lists(st.integers(-1, 4), min_size=3, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(MEMBERSHIPS, MEMBERSHIPS), min_size=1, max_size=10))
def test_membership_changed_semantics(pairs):
    before = np.array([b for b, _ in pairs])
    after = np.array([a for _, a in pairs])
    got = membership_changed(before, after).tolist()
    for (b, a), changed in zip(pairs, got, strict=True):
        assert changed == (b[0] != a[0] or sorted(b[1:]) != sorted(a[1:]))


def test_membership_changed_order_of_secondaries_does_not_matter():
    assert membership_changed(np.array([[1, 2, 3]]), np.array([[1, 3, 2]])).tolist() == [False]
    assert membership_changed(np.array([[1, 2, 3]]), np.array([[2, 1, 3]])).tolist() == [True]
    assert membership_changed(np.array([[1, -1]]), np.array([[1, 5]])).tolist() == [True]


def _reference(v, current_rows, cs, top_m, min_score, margin):
    """The module's rules written out plainly, in float64: the oracle for the
    compiled chooser. Returns centre rows (-1 = empty) and exact scores."""
    scores = cs.vectors.astype(np.float64) @ v.astype(np.float64)
    taken, rows = set(), []
    for j in range(min(top_m, cs.k)):
        bonus = current_rows[:1] if j == 0 else current_rows[1:]
        eff = [-np.inf if c in taken else scores[c] + margin * (c in bonus) for c in range(cs.k)]
        best = int(np.argmax(eff))
        taken.add(best)
        rows.append(-1 if j > 0 and scores[best] < min_score else best)
    rows += [-1] * (top_m - len(rows))
    return rows, [float(scores[r]) if r >= 0 else 0.0 for r in rows]


@settings(max_examples=300, deadline=None)
@given(scenes(), st.integers(1, 4), st.sampled_from([-1.0, 0.0, 0.3]), st.integers(0, 2**16))
def test_compiled_chooser_matches_the_written_out_rules(scene, top_m, min_score, seed):
    cs, v, margin, _ = scene
    rng = np.random.default_rng(seed)
    current = [-1] * top_m
    picks = rng.permutation(cs.k)[: min(top_m, cs.k)]
    for j, row in enumerate(picks):
        current[j] = int(row) if rng.random() < 0.7 else -1
    exact = cs.vectors.astype(np.float64) @ v[0].astype(np.float64)
    gaps = np.abs(exact[:, None] - exact[None, :])[np.triu_indices(cs.k, 1)]
    assume(np.all(gaps > BAND) and np.all(np.abs(gaps - margin) > BAND))  # no near-ties
    current_ids = np.array([[cs.ids[r] if r >= 0 else -1 for r in current]])
    got = assign_many(v, current_ids, cs, top_m=top_m, min_score=min_score, margin=margin)
    rows, scores = _reference(v[0], current, cs, top_m, min_score, margin)
    assert got.ids[0].tolist() == [int(cs.ids[r]) if r >= 0 else -1 for r in rows]
    np.testing.assert_allclose(got.scores[0], scores, atol=1e-6)


def test_first_click_tables_refresh_stale_items_ahead_and_equal_direct_assignment(monkeypatch):
    import stream.core.assign as assign_module
    from stream.core.assign import FirstClickCache
    from stream.core.items import ItemCatalog

    rng = np.random.default_rng(3)
    items = ItemCatalog(8)
    items.rows_for(["no-vector"])  # row 0: known, without a vector
    items.upsert_many([f"i{i}" for i in range(1, 31)], rng.standard_normal((30, 8)))
    cs = CentreSet.create(rng.standard_normal((5, 8)), created_at_ms=0)
    calls = []
    real = assign_module._assign

    def counting(vectors, *args):
        calls.append(len(vectors))
        return real(vectors, *args)

    monkeypatch.setattr(assign_module, "_assign", counting)
    cache = FirstClickCache(ahead=10)
    got = cache.tables(items, np.array([25, 25, 3]), cs, 2, 0.0)
    assert calls == [10]  # rows 3 and 25, and the first 8 other stale rows with a vector
    refreshed = [1, 2, 3, 4, 5, 6, 7, 8, 9, 25]
    assert np.flatnonzero(cache._epoch[:31] == 1).tolist() == refreshed
    cache.tables(items, np.array([1, 2, 3, 9]), cs, 2, 0.0)  # all up to date: no call
    assert calls == [10]
    items.upsert("i5", rng.standard_normal(8))  # a new vector makes row 5 stale again
    cache.tables(items, np.array([5]), cs, 2, 0.0)
    assert calls == [10, 10] and cache._epoch[5] == 2
    direct = assign_many(items.vectors[1:], np.full((30, 1), -1), cs, top_m=2, margin=0.0)
    for row in refreshed:
        assert got.ids[row].tolist() == direct.ids[row - 1].tolist()
        assert np.allclose(got.scores[row], direct.scores[row - 1], atol=1e-6)
