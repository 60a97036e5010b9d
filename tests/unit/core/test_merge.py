"""The dynamic merge rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.centres import CentreSet
from stream.core.merge import apply_merges, plan_merges


@st.composite
def merge_inputs(draw):
    k = draw(st.integers(1, 9))
    dim = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = sorted(rng.permutation(30)[:k].tolist())
    # Some history: a few retired ids aliased to live ones.
    aliases = {30 + j: ids[j % k] for j in range(draw(st.integers(0, 3)))}
    cs = CentreSet.create(
        rng.standard_normal((k, dim)), ids=ids, aliases=aliases, version=3, created_at_ms=0
    )
    sizes = {c: draw(st.integers(0, 60)) for c in ids}
    if draw(st.booleans()):
        sizes.pop(ids[0])  # missing ids count as 0
    sizes[999] = 5  # an id that is not live is ignored
    return cs, sizes, draw(st.integers(0, 50))


@settings(max_examples=200, deadline=None)
@given(merge_inputs())
def test_plan_and_apply_properties(inputs):
    cs, sizes, min_size = inputs
    plan = plan_merges(sizes, cs, min_size)
    live = cs.ids.tolist()
    assert plan.sizes_before == {c: sizes.get(c, 0) for c in live}
    after = plan.sizes_after
    # No cluster below min_size unless a single one is left.
    assert len(after) == 1 or min(after.values()) >= min_size
    assert len(after) >= 1
    # Members are conserved.
    assert sum(after.values()) == sum(plan.sizes_before.values())
    # Every step retires a distinct live id; targets keep their ids.
    sources = [s.source for s in plan.steps]
    assert len(set(sources)) == len(sources)
    assert set(after) == set(live) - set(sources)
    for step in plan.steps:
        assert step.target_size_after == step.source_size + step.target_size_before
        assert step.source in live and step.target in live and step.source != step.target
    for c, v in plan.vectors_after.items():
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
        assert c in after

    merged = apply_merges(cs, plan, created_at_ms=42)
    if not plan:
        assert merged is cs
        return
    assert merged.version == cs.version + 1
    assert merged.reason == "merge"
    assert merged.created_at_ms == 42
    assert sorted(merged.ids.tolist()) == sorted(after)
    assert merged.size_of() == after
    # Every retired id (old history included) is aliased to a live id.
    assert set(merged.aliases) == set(cs.aliases) | set(sources)
    assert set(merged.aliases.values()) <= set(merged.ids.tolist())
    resolved = merged.resolve(np.array(live))
    assert (resolved >= 0).all()
    # Kept ids resolve to themselves; a retired id goes where its members went.
    for c, r in zip(live, resolved.tolist(), strict=True):
        if c in after:
            assert r == c
    assert merged.next_id >= cs.next_id
    assert merged.stats["retired"] == sources


def test_smallest_merges_into_most_similar_and_centre_is_weighted_mean():
    cs = CentreSet.create([[1, 0], [0.8, 0.6], [0, 1]], ids=[4, 5, 6], created_at_ms=0)
    plan = plan_merges({4: 30, 5: 10, 6: 40}, cs, min_size=20)
    assert [(s.source, s.target) for s in plan.steps] == [(5, 4)]
    step = plan.steps[0]
    assert (step.source_size, step.target_size_before, step.target_size_after) == (10, 30, 40)
    assert step.similarity == pytest.approx(0.8)
    # (30 * [1, 0] + 10 * [0.8, 0.6]) = [38, 6], normalised.
    expected = np.array([38.0, 6.0]) / np.hypot(38.0, 6.0)
    np.testing.assert_allclose(plan.vectors_after[4], expected, atol=1e-6)
    np.testing.assert_allclose(plan.vectors_after[6], [0, 1], atol=1e-7)
    merged = apply_merges(cs, plan, created_at_ms=1)
    assert merged.aliases == {5: 4}
    np.testing.assert_allclose(
        merged.vectors[merged.rows_of(np.array([4]))[0]], expected, atol=1e-6
    )


def test_merges_repeat_and_chains_are_flattened():
    # 1 (size 1) merges into 2 (size 2) -> 2 has 3, still the smallest below 5 -> into 3.
    cs = CentreSet.create(
        [[1, 0.1], [1, 0], [0.9, 0.2], [-1, 0]], ids=[1, 2, 3, 9], created_at_ms=0
    )
    plan = plan_merges({1: 1, 2: 2, 3: 50, 9: 60}, cs, min_size=5)
    assert [(s.source, s.target) for s in plan.steps] == [(1, 2), (2, 3)]
    merged = apply_merges(cs, plan)
    assert merged.aliases == {1: 3, 2: 3}
    assert merged.size_of() == {3: 53, 9: 60}


def test_ties_on_size_merge_the_lowest_id_first():
    cs = CentreSet.create([[1, 0], [0, 1], [0.7, 0.7]], ids=[8, 3, 5], created_at_ms=0)
    plan = plan_merges({8: 2, 3: 2, 5: 100}, cs, min_size=3)
    assert [s.source for s in plan.steps] == [3, 8]


def test_one_cluster_is_always_left():
    cs = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
    plan = plan_merges({0: 1, 1: 2}, cs, min_size=100)
    assert len(plan.sizes_after) == 1 and sum(plan.sizes_after.values()) == 3
    assert apply_merges(cs, plan).k == 1


def test_nothing_to_do_and_validation():
    cs = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
    plan = plan_merges({0: 10, 1: 10}, cs, min_size=10)
    assert not plan and plan.steps == ()
    assert apply_merges(cs, plan) is cs
    assert plan.as_dict()["clusters_after"] == 2
    with pytest.raises(ValueError):
        plan_merges({0: 1}, cs, min_size=-1)
