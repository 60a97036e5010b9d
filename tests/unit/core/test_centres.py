"""Versioned centre sets: validation, aliases, ids never reused, search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.centres import REASONS, CentreSet
from stream.core.items import unit_rows


@st.composite
def centre_sets(draw):
    k = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pool = draw(st.lists(st.integers(0, 40), min_size=k, max_size=k, unique=True))
    retired = draw(st.lists(st.integers(41, 80), max_size=4, unique=True))
    aliases = {r: pool[draw(st.integers(0, k - 1))] for r in retired}
    return CentreSet.create(
        rng.standard_normal((k, dim)),
        reason=draw(st.sampled_from(REASONS)),
        ids=pool,
        sizes=draw(st.lists(st.integers(0, 10**6), min_size=k, max_size=k)),
        version=draw(st.integers(1, 1000)),
        aliases=aliases,
        created_at_ms=draw(st.integers(0, 2**50)),
        stats={"note": "x", "k_curve": {"2": 0.5}, "n": 3},
    )


def test_equality_sees_every_field():
    base = CentreSet.create([[1, 0], [0, 1]], ids=[3, 4], aliases={1: 3}, created_at_ms=5)
    assert base != CentreSet.create([[1, 0], [0, 1]], ids=[3, 4], created_at_ms=5)
    assert base != CentreSet.create([[1, 0], [0, 1]], ids=[3, 4], aliases={1: 3}, created_at_ms=6)
    assert base != CentreSet.create([[1, 0], [0, 1]], ids=[4, 3], aliases={1: 3}, created_at_ms=5)
    assert base != CentreSet.create(
        [[1, 0], [0, 1]], ids=[3, 4], aliases={1: 3}, created_at_ms=5, version=2
    )
    assert base == CentreSet.create([[2, 0], [0, 3]], ids=[3, 4], aliases={1: 3}, created_at_ms=5)


def test_resolve_follows_aliases():
    cs = CentreSet.create([[1, 0], [0, 1]], ids=[5, 9], aliases={2: 5, 7: 9}, created_at_ms=0)
    ids = np.array([[2, 5, 7], [9, -1, 100]])
    assert cs.resolve(ids).tolist() == [[5, 5, 9], [9, -1, -1]]
    assert cs.rows_of(ids).tolist() == [[0, 0, 1], [1, -1, -1]]
    assert cs.resolve(np.array([-5, 0, 1, 3, 4, 6, 8])).tolist() == [-1] * 7


def test_successor_flattens_alias_chains():
    v1 = CentreSet.create(np.eye(3), ids=[10, 11, 12], created_at_ms=0)
    v2 = v1.successor([11, 12], np.eye(3)[1:], [5, 5], {10: 11}, "merge", created_at_ms=1)
    v3 = v2.successor([12], np.eye(3)[2:], [10], {11: 12}, "merge", created_at_ms=2)
    assert (v2.version, v3.version) == (2, 3)
    assert v3.aliases == {10: 12, 11: 12}  # flat: 10 no longer points at the retired 11
    assert v3.resolve(np.array([10, 11, 12])).tolist() == [12, 12, 12]
    assert v3.reason == "merge"
    # Several retirements in one step that chain among themselves end at a live id too.
    v4 = v1.successor([12], np.eye(3)[2:], [10], {10: 11, 11: 12}, "merge")
    assert v4.aliases == {10: 12, 11: 12}


def test_successor_rejects_aliases_that_do_not_end_at_a_live_id():
    v1 = CentreSet.create(np.eye(3), ids=[0, 1, 2], created_at_ms=0)
    with pytest.raises(ValueError):
        v1.successor([2], np.eye(3)[2:], [1], {0: 1, 1: 0}, "merge")  # a cycle
    with pytest.raises(ValueError):
        v1.successor([2], np.eye(3)[2:], [1], {0: 2, 1: 77}, "merge")  # 77 is nobody


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(vectors=np.eye(2), ids=[1, 1]),  # duplicate ids
        dict(vectors=np.eye(2), ids=[0, -1]),  # negative id
        dict(vectors=np.eye(2), aliases={5: 7}),  # alias to an unknown id
        dict(vectors=np.eye(2), aliases={0: 1}),  # a live id cannot be retired
        dict(vectors=np.eye(2), reason="because"),
        dict(vectors=np.eye(2), version=0),
        dict(vectors=np.eye(2), sizes=[1, 2, 3]),
        dict(vectors=np.eye(2), ids=[0, 1, 2]),  # one row per id
        dict(vectors=np.zeros((0, 2))),  # k >= 1
        dict(vectors=np.ones(3)),  # not 2-D
    ],
)
def test_invalid_constructions_raise(kwargs):
    kwargs = {"created_at_ms": 0, **kwargs}
    with pytest.raises(ValueError):
        CentreSet.create(**kwargs)


def test_alias_to_a_retired_id_raises():
    with pytest.raises(ValueError):
        CentreSet.create(np.eye(2), ids=[0, 1], aliases={2: 0, 3: 2}, created_at_ms=0)


def test_centre_sets_are_immutable():
    cs = CentreSet.create(np.eye(2), created_at_ms=0)
    with pytest.raises(ValueError):
        cs.ids[0] = 5
    with pytest.raises(ValueError):
        cs.vectors[0, 0] = 5.0
    with pytest.raises(AttributeError):
        cs.version = 3  # type: ignore[misc]


@settings(max_examples=100, deadline=None)
@given(centre_sets())
def test_next_id_is_above_every_live_and_retired_id(cs):
    used = set(cs.ids.tolist()) | set(cs.aliases)
    assert cs.next_id not in used
    assert cs.next_id > max(used)


@settings(max_examples=100, deadline=None)
@given(centre_sets(), st.data())
def test_successors_never_reuse_an_id(cs, data):
    """Through any chain of successors, an id once used is never handed out again."""
    used = set(cs.ids.tolist()) | set(cs.aliases)
    current = cs
    for _ in range(data.draw(st.integers(1, 4))):
        live = current.ids.tolist()
        # Retire some live ids (aliased to survivors) and add fresh ids from next_id.
        keep = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
        fresh = list(range(current.next_id, current.next_id + data.draw(st.integers(0, 2))))
        new_ids = keep + fresh
        retire = {r: keep[0] for r in live if r not in keep}
        nxt = current.successor(
            new_ids,
            np.ones((len(new_ids), current.dim)),
            [1] * len(new_ids),
            retire,
            "recompute",
            created_at_ms=0,
        )
        assert not set(fresh) & used
        assert nxt.next_id >= current.next_id
        assert set(nxt.aliases.values()) <= set(new_ids)
        assert set(nxt.ids.tolist()) | set(nxt.aliases) == used | set(fresh)
        used |= set(fresh)
        current = nxt


def test_successor_that_drops_an_id_without_alias_must_not_allow_its_reuse():
    """Ids are never reused: a successor may not silently forget a live id.

    ``v1`` uses ids 0..2. A successor that keeps 0 and 1 but gives no alias for 2
    must either be rejected or still report ``next_id >= 3``; otherwise id 2 is
    handed out again with a new meaning.
    """
    v1 = CentreSet.create(np.eye(3), ids=[0, 1, 2], created_at_ms=0)
    try:
        v2 = v1.successor([0, 1], np.eye(3)[:2], [1, 1], {}, "recompute", created_at_ms=1)
    except ValueError:
        return
    assert v2.next_id >= v1.next_id, f"next_id went back from {v1.next_id} to {v2.next_id}"


def test_a_retired_id_cannot_come_back_as_a_live_id():
    v1 = CentreSet.create(np.eye(2), ids=[0, 1], created_at_ms=0)
    v2 = v1.successor([0], np.eye(2)[:1], [2], {1: 0}, "merge", created_at_ms=1)
    assert v2.next_id == 2
    with pytest.raises(ValueError):
        v2.successor([0, 1], np.eye(2), [1, 1], {}, "recompute", created_at_ms=2)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 6),
    st.integers(1, 10),
    st.integers(0, 2**32 - 1),
)
def test_search_returns_the_best_centres(k, dim, n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(100)[:k]
    cs = CentreSet.create(rng.standard_normal((k, dim)), ids=ids, created_at_ms=0)
    x = unit_rows(rng.standard_normal((5, dim)))
    got_ids, got_scores = cs.search(x, n)
    assert got_ids.shape == got_scores.shape == (5, n)
    exact = x.astype(np.float64) @ cs.vectors64.T
    for i in range(5):
        order = np.argsort(-exact[i], kind="stable")
        best = exact[i, order[0]]
        # The first hit is a best centre (ties within float32 noise allowed).
        row0 = cs.rows_of(got_ids[i, :1])[0]
        assert exact[i, row0] >= best - 1e-5
        assert got_scores[i, 0] == pytest.approx(best, abs=1e-5)
        assert np.all(np.diff(got_scores[i, : min(n, k)]) <= 1e-6)
        if n > k:
            assert (got_ids[i, k:] == -1).all()
        assert len(set(got_ids[i, : min(n, k)].tolist())) == min(n, k)


def test_search_validates_shape_and_create_normalises():
    cs = CentreSet.create([[3, 4], [0, -2]], created_at_ms=0)
    np.testing.assert_allclose(cs.vectors, [[0.6, 0.8], [0, -1]], atol=1e-7)
    assert (cs.k, cs.dim, cs.next_id) == (2, 2, 2)
    with pytest.raises(ValueError):
        cs.search(np.ones((1, 3), np.float32))
    assert cs.size_of() == {0: 0, 1: 0}
