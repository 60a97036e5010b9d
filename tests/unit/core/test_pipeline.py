"""process_batch, recommend and replay: one batch of clicks through the whole core."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.assign import membership_changed
from stream.core.centres import CentreSet
from stream.core.clicks import ClickBatch
from stream.core.items import item_key
from stream.core.merge import apply_merges, plan_merges
from stream.core.pipeline import (
    EngineConfig,
    EngineState,
    process_batch,
    recommend,
    replay,
    resolve_memberships,
    warm_up,
)
from stream.core.recall import RecallWeights
from stream.io.synth import SynthConfig, generate

T0 = 1_700_000_000_000
CFG = EngineConfig(dim=16, top_m=2, half_life_s=30.0, cf_half_life_s=10.0, recent_items=4)
# items keep the vectors they are given (no learnt ones, no seeds): unknown items stay unknown
FIXED = {"item_learn_min_clicks": 0, "item_seed_vectors": False}


def _synth(n_events):
    return generate(
        SynthConfig(
            n_users=120,
            n_clusters=5,
            n_items=200,
            dim=16,
            n_events=n_events,
            seed=4,
            noise=0.3,
            out_of_order=0.05,
        )
    )


def _state(data, cfg=CFG, with_vectors_for=0.9):
    """Engine state with perturbed planted centres; ~10% of items have no vector."""
    rng = np.random.default_rng(0)
    centres = CentreSet.create(
        data.centres + 0.4 * rng.standard_normal(data.centres.shape), created_at_ms=0
    )
    state = EngineState.in_memory(cfg, centres=centres)
    n = int(len(data.item_ids) * with_vectors_for)
    state.items.upsert_many(data.item_ids[:n], data.item_vectors[:n])
    return state


def _run(data, batch_size, n_events):
    state = _state(data)
    clicks = data.click_batch(0, n_events)
    for start in range(0, len(clicks), batch_size):
        process_batch(state, clicks.slice(start, start + batch_size))
    return state


@pytest.fixture(scope="module")
def data():
    return _synth(3000)


def test_state_digest_does_not_depend_on_batch_size(data):
    small = 500  # batch size 1 is slow: compare it on a prefix
    one_by_one = _run(data, 1, small).digest()
    assert one_by_one == _run(data, 7, small).digest()
    assert one_by_one == _run(data, small, small).digest()
    whole = _run(data, 3000, 3000).digest()
    assert whole == _run(data, 7, 3000).digest()
    assert whole == _run(data, 256, 3000).digest()
    assert whole != one_by_one  # the digest does see the rest of the stream


def test_batch_counters(data):
    state = _state(data, EngineConfig(**{**CFG.__dict__, **FIXED}))
    clicks = data.click_batch(0, 1000)
    out = process_batch(state, clicks)
    has = state.items.has_vector[state.items.rows_for(clicks.item_ids)]
    assert out.events == 1000
    assert out.applied == int(has.sum()) and out.unknown_items == 1000 - out.applied
    assert out.unknown_items > 0  # the fixture leaves some items without vectors
    assert out.ts_max == int(clicks.ts.max())
    assert 0.0 <= out.mean_distance <= 2.0
    # The users' click counters add up to the applied clicks.
    rows = [r for _, r in state.users.iter_chunks()]
    assert int(np.concatenate(rows)["clicks"].sum()) == out.applied


def test_assignment_changes_are_exactly_the_users_whose_memberships_changed(data):
    state = _state(data)
    process_batch(state, data.click_batch(0, 1500))
    # Centres change between batches (a merge): stored ids may now be retired.
    plan = plan_merges({0: 0, 1: 100, 2: 100, 3: 100, 4: 1}, state.centres, min_size=50)
    state.centres = apply_merges(state.centres, plan, created_at_ms=1)
    assert state.centres.aliases  # the test needs retired ids
    batch = data.click_batch(1500, 2500)
    users = list(dict.fromkeys(batch.user_ids))
    before = state.users.read_many(users).rows.copy()
    out = process_batch(state, batch)
    after = state.users.read_many(users).rows
    changed = membership_changed(before["cluster_ids"], after["cluster_ids"])
    expected = [u for u, c in zip(users, changed.tolist(), strict=True) if c]
    assert sorted(out.changes.user_ids) == sorted(expected)
    assert len(set(out.changes.user_ids)) == len(out.changes)
    assert len(expected) > 0
    pos = {u: i for i, u in enumerate(users)}
    for j, u in enumerate(out.changes.user_ids):
        i = pos[u]
        np.testing.assert_array_equal(out.changes.before_ids[j], before["cluster_ids"][i])
        np.testing.assert_array_equal(out.changes.before_scores[j], before["scores"][i])
        np.testing.assert_array_equal(out.changes.ids[j], after["cluster_ids"][i])
        np.testing.assert_array_equal(out.changes.scores[j], after["scores"][i])
    # Nobody holds a retired id any more; live ids only.
    live = set(state.centres.ids.tolist())
    assert set(after["cluster_ids"].ravel().tolist()) <= live | {-1}


def _tiny_state(top_m=1, recent=3):
    state = EngineState.in_memory(
        EngineConfig(dim=2, top_m=top_m, recent_items=recent, min_score=-1.0, **FIXED)
    )
    state.items.upsert("x", vector=[1, 0])
    state.items.upsert("y", vector=[0, 1])
    state.items.upsert("xy", vector=[0.8, 0.6])
    state.centres = CentreSet.create([[1, 0], [0, 1]], ids=[10, 20], created_at_ms=0)
    return state


def test_unknown_item_is_counted_keeps_the_vector_but_reaches_the_cf():
    state = _tiny_state(top_m=2)
    process_batch(state, ClickBatch.from_columns(["u"], ["xy"], [T0]))
    before = state.users.read_many(["u"]).rows.copy()
    assert before["cluster_ids"][0].tolist() == [10, 20]
    out = process_batch(state, ClickBatch.from_columns(["u"], ["mystery"], [T0 + 5]))
    after = state.users.read_many(["u"]).rows
    assert (out.events, out.applied, out.unknown_items) == (1, 0, 1)
    for field in ("mean", "weight", "t_ms", "clicks", "cluster_ids", "scores"):
        np.testing.assert_array_equal(after[field], before[field], err_msg=field)
    assert len(out.changes) == 0
    # The click reached both clusters' CF, split 0.8 : 0.6 by membership score.
    key = item_key("mystery")
    d = out.cf_delta
    got = {
        int(c): float(v)
        for c, k, v in zip(d.cluster_ids, d.item_keys, d.values, strict=True)
        if k == key
    }
    assert got == pytest.approx({10: 0.8 / 1.4, 20: 0.6 / 1.4}, rel=1e-6)
    keys, _ = state.cf.top(10, 5)
    assert key in keys.tolist()
    # It is a seen item now, and the catalogue knows it (without a vector).
    assert after["recent"][0, 0] == key
    row = state.items.rows_for(["mystery"])[0]
    assert not state.items.has_vector[row]


def test_unknown_item_of_a_user_without_clusters_is_unassigned():
    state = _tiny_state()
    out = process_batch(state, ClickBatch.from_columns(["new"], ["mystery"], [T0], [2.0]))
    assert (out.unknown_items, out.unassigned) == (1, 1)
    # the click still counts, whole, in the global scope (everyone's popularity)
    assert out.cf_delta.cluster_ids.tolist() == [-1] and out.cf_delta.values.tolist() == [2.0]
    assert out.mean_distance is None
    assert len(out.changes) == 0
    assert state.users.read_many(["new"]).rows["weight"][0] == 0


def test_cf_delta_splits_a_click_by_membership_share():
    state = _tiny_state(top_m=2)
    out = process_batch(state, ClickBatch.from_columns(["u"], ["xy"], [T0], [2.0]))
    # User vector = [0.8, 0.6]: scores 0.8 and 0.6, shares 4/7 and 3/7 of weight 2.
    assert out.changes.ids.tolist() == [[10, 20]]
    np.testing.assert_allclose(out.changes.scores, [[0.8, 0.6]], atol=1e-6)
    assert out.cf_delta.cluster_ids.tolist() == [10, 20]
    np.testing.assert_allclose(out.cf_delta.values, [2 * 4 / 7, 2 * 3 / 7], rtol=1e-6)
    assert out.mean_distance == pytest.approx(0.2, abs=1e-6)


def test_recent_items_newest_first_and_capped():
    state = _tiny_state(recent=3)
    process_batch(
        state, ClickBatch.from_columns(["u", "v", "u"], ["x", "x", "y"], [T0, T0, T0 + 1])
    )
    rows = state.users.read_many(["u", "v"]).rows
    assert rows["recent"].tolist() == [[item_key("y"), item_key("x"), -1], [item_key("x"), -1, -1]]
    process_batch(state, ClickBatch.from_columns(["u", "u"], ["xy", "mystery"], [T0 + 2, T0 + 3]))
    rows = state.users.read_many(["u"]).rows
    assert rows["recent"][0].tolist() == [item_key("mystery"), item_key("xy"), item_key("y")]


def test_out_of_order_click_is_applied_without_rewinding_the_user():
    day = 86_400_000
    state = EngineState.in_memory(EngineConfig(dim=2, top_m=1, half_life_s=86_400.0))
    state.items.upsert("x", vector=[1, 0])
    state.items.upsert("y", vector=[0, 1])
    state.centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
    process_batch(state, ClickBatch.from_columns(["u"], ["y"], [T0 + day]))
    out = process_batch(state, ClickBatch.from_columns(["u"], ["x"], [T0]))  # a day late
    row = state.users.read_many(["u"]).rows[0]
    assert out.applied == 1
    assert row["t_ms"] == T0 + day
    # By hand: the late click counts half: mean = (0.5 x + 1 y) / 1.5, weight 1.5.
    np.testing.assert_allclose(row["mean"], [1 / 3, 2 / 3], atol=1e-7)
    assert row["weight"] == pytest.approx(1.5)
    assert row["cluster_ids"].tolist() == [1]
    assert row["clicks"] == 2


def test_empty_batch_changes_nothing(data):
    state = _state(data)
    process_batch(state, data.click_batch(0, 300))
    digest = state.digest()
    out = process_batch(state, ClickBatch.from_columns([], [], []))
    assert (out.events, out.applied, out.unknown_items, out.unassigned) == (0, 0, 0, 0)
    assert len(out.changes) == 0 and out.changes.ids.shape == (0, CFG.top_m)
    assert len(out.cf_delta) == 0 and out.mean_distance is None and out.ts_max is None
    assert state.digest() == digest


def test_without_centres_vectors_move_but_nobody_is_assigned(data):
    state = _state(data)
    state.centres = None
    out = process_batch(state, data.click_batch(0, 200))
    assert out.unassigned == 200 and len(out.changes) == 0
    assert set(out.cf_delta.cluster_ids.tolist()) == {-1}  # every click in the global scope
    batch = data.click_batch(0, 200)
    decayed = batch.weights * 2.0 ** ((batch.ts - out.cf_delta.landmark_ms) / CFG.cf_half_life_ms)
    assert out.cf_delta.values.sum() == pytest.approx(decayed.sum())
    ids, x = state.users.vectors()
    assert len(ids) > 0 and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)


def test_recommend_excludes_seen_items_when_asked():
    state = _tiny_state()
    # Three users in cluster 10 click x, xy and "hot"; ann only clicked x.
    clicks = ClickBatch.from_columns(
        ["ann", "bob", "bob", "cat", "cat", "cat"],
        ["x", "x", "hot", "xy", "hot", "hot"],
        [T0] * 6,
    )
    process_batch(state, clicks)
    cf_only = RecallWeights(cf=1, coclick=0, vector=0)
    seen_too = recommend(state, "ann", n=10, exclude_seen=False, weights=cf_only)
    assert [i for i, _ in seen_too][:2] == ["hot", "x"]  # hot: 3 clicks, x: 2, xy: 1
    assert dict(seen_too)["x"] == pytest.approx(2 / 3)  # a source's scores over its best
    fresh = recommend(state, "ann", n=10, weights=cf_only)
    assert "x" not in dict(fresh)
    assert [i for i, _ in fresh] == ["hot", "xy"]
    assert recommend(state, "nobody") == []
    state.cf = None
    with pytest.raises(ValueError):
        recommend(state, "ann")


def test_recommend_follows_aliases_of_retired_clusters():
    state = _tiny_state()
    process_batch(state, ClickBatch.from_columns(["ann", "bob"], ["y", "y"], [T0, T0]))
    # Cluster 20 is merged into 10: ann's stored membership 20 now means 10.
    plan = plan_merges({10: 100, 20: 0}, state.centres, min_size=1)
    state.centres = apply_merges(state.centres, plan, created_at_ms=1)
    assert state.centres.aliases == {20: 10}
    process_batch(state, ClickBatch.from_columns(["bob"], ["x"], [T0 + 1]))
    assert "x" in dict(recommend(state, "ann", n=5))


def test_replay_totals_equal_the_sum_of_batches(data):
    clicks = data.click_batch(0, 2000)
    state = _state(data)
    totals = replay(state, clicks, batch_size=300)
    manual = _state(data)
    outs = [process_batch(manual, clicks.slice(s, s + 300)) for s in range(0, 2000, 300)]
    assert totals == {
        "events": 2000,
        "applied": sum(o.applied for o in outs),
        "unknown_items": sum(o.unknown_items for o in outs),
        "unassigned": sum(o.unassigned for o in outs),
        "changes": sum(len(o.changes) for o in outs),
        "duplicates": sum(o.duplicates for o in outs),
    }
    assert totals["applied"] + totals["unknown_items"] == 2000
    assert state.digest() == manual.digest()
    assert replay(_state(data), ClickBatch.from_columns([], [], []))["events"] == 0


def test_engine_config_validates():
    for kwargs in (
        dict(dim=0),
        dict(top_m=0),
        dict(recent_items=0),
        dict(threads=0),
        dict(half_life_s=0),
        dict(cf_half_life_s=-1),
        dict(hysteresis_margin=-0.1),
    ):
        with pytest.raises(ValueError):
            EngineConfig(**kwargs)
    cfg = EngineConfig(half_life_s=2.0, cf_half_life_s=3.0)
    assert (cfg.half_life_ms, cfg.cf_half_life_ms) == (2000.0, 3000.0)


def test_resolve_memberships_follows_aliases_and_drops_duplicates():
    cs = CentreSet.create(np.eye(3), ids=[10, 20, 30], aliases={5: 10, 6: 20}, created_at_ms=0)
    ids = np.array([[5, 10, 30], [6, 99, 20], [-1, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4], [0, 0, 0]], dtype=np.float32)
    live, s = resolve_memberships(cs, ids, scores)
    # Row 0: 5 -> 10, and the second 10 is a duplicate; row 1: 99 is unknown, 20 a duplicate.
    assert live.tolist() == [[10, -1, 30], [20, -1, -1], [-1, -1, -1]]
    np.testing.assert_allclose(s, [[0.9, 0, 0.7], [0.6, 0, 0], [0, 0, 0]])
    assert s.dtype == np.float32


def test_a_click_of_a_user_with_only_negative_scores_goes_whole_to_the_primary():
    state = _tiny_state(top_m=2)
    state.items.upsert("away", vector=[-0.6, -0.8])
    out = process_batch(state, ClickBatch.from_columns(["u"], ["away"], [T0], [3.0]))
    assert out.changes.ids.tolist() == [[10, 20]]  # min_score=-1 keeps both
    np.testing.assert_allclose(out.changes.scores, [[-0.6, -0.8]], atol=1e-6)
    # No positive score to split by: the primary takes the whole weight.
    d = out.cf_delta
    got = dict(zip(d.cluster_ids.tolist(), d.values.tolist(), strict=True))
    assert got[10] == pytest.approx(3.0)
    assert sum(got.values()) == pytest.approx(3.0)


def test_warm_up_runs_every_step_on_its_own_state():
    config = EngineConfig(dim=8, top_m=2)
    assert warm_up(config) == 128 == warm_up(config, seed=1)
