"""The off-peak recompute: k-means, elbow, stable ids through Hungarian matching."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from stream.core.centres import CentreSet
from stream.core.items import unit_rows as unit
from stream.core.pipeline import EngineConfig, EngineState, process_batch
from stream.core.recompute import (
    elbow,
    k_candidates,
    match_ids,
    nearest,
    publish_verdict,
    recompute,
    spherical_kmeans,
)
from stream.io.synth import SynthConfig, generate

PLANTED = 6


def _user_vectors(data, start=0, stop=None, half_life_s=7 * 86_400.0):
    """User ids, (n, dim) unit vectors and planted-cluster indices, via the real core."""
    state = EngineState.in_memory(
        EngineConfig(dim=data.config.dim, half_life_s=half_life_s), cf=False
    )
    state.items.upsert_many(data.item_ids, data.item_vectors)
    process_batch(state, data.click_batch(start, stop))
    ids, x = state.users.vectors()
    rows = np.array([int(u[1:]) for u in ids])  # synth user ids are "u%06d" % index
    return ids, x, rows


@pytest.fixture(scope="module")
def planted():
    data = generate(
        SynthConfig(n_users=1200, n_clusters=PLANTED, n_items=600, dim=32, n_events=18_000, seed=11)
    )
    _, x, rows = _user_vectors(data)
    return data, x, data.truth_before[rows]


@pytest.fixture(scope="module")
def drifted():
    """Planted clusters, then a brand-new cluster takes ~10% of the users."""
    data = generate(
        SynthConfig(
            n_users=1200,
            n_clusters=PLANTED,
            n_items=600,
            dim=32,
            n_events=36_000,
            seed=5,
            drift_at=0.5,
            drift_users=0.2,
            new_cluster=True,
        )
    )
    _, before, rows_b = _user_vectors(data, 0, data.drift_index)
    _, after, rows_a = _user_vectors(data, data.drift_index, None)
    return data, before, data.truth_before[rows_b], after, data.truth_after[rows_a]


def test_recovers_planted_clusters(planted):
    data, x, truth = planted
    cs, stats = recompute(x, None, k=PLANTED, seed=3, created_at_ms=0)
    labels, _ = nearest(x, cs.vectors)
    assert adjusted_rand_score(truth, labels) >= 0.9
    assert (cs.version, cs.reason, cs.k) == (1, "recompute", PLANTED)
    assert cs.ids.tolist() == list(range(PLANTED))
    assert stats.n_vectors == len(x) and stats.k == PLANTED
    assert stats.inertia_before is None and stats.user_churn is None
    assert cs.sizes.sum() == len(x)
    # Every learned centre is close to one planted centre and vice versa.
    sim = cs.vectors.astype(np.float64) @ data.centres.T.astype(np.float64)
    assert sorted(np.argmax(sim, axis=1).tolist()) == list(range(PLANTED))
    assert sim.max(axis=1).min() > 0.9


def test_second_recompute_on_unchanged_data_keeps_every_id(planted):
    _, x, _ = planted
    first, _ = recompute(x, None, k=PLANTED, seed=1, created_at_ms=0)
    again, stats = recompute(x, first, k=PLANTED, seed=2, created_at_ms=1)
    assert stats.retired == 0 and stats.id_churn == 0
    assert stats.matched == PLANTED and stats.new == 0
    assert sorted(again.ids.tolist()) == sorted(first.ids.tolist())
    assert again.aliases == {}
    assert again.version == first.version + 1
    assert stats.user_churn is not None and stats.user_churn < 0.02
    # A kept id means the same thing: its centre barely moved.
    for cid in first.ids.tolist():
        a = first.vectors[first.rows_of(np.array([cid]))[0]]
        b = again.vectors[again.rows_of(np.array([cid]))[0]]
        assert float(a @ b) > 0.95
    assert abs(stats.inertia_before - stats.inertia_after) < 0.01


def test_k_defaults_to_the_previous_k(planted):
    _, x, _ = planted
    first, _ = recompute(x, None, k=PLANTED, seed=1, created_at_ms=0)
    again, _ = recompute(x, first, seed=4, created_at_ms=1)
    assert again.k == PLANTED
    with pytest.raises(ValueError):
        recompute(x, None)


def test_new_cluster_after_drift_gets_a_fresh_id_and_old_ids_persist(drifted):
    data, before, _, after, truth_after = drifted
    first, _ = recompute(before, None, k=PLANTED, seed=1, created_at_ms=0)
    second, stats = recompute(after, first, k=PLANTED + 1, seed=2, created_at_ms=1)
    fresh = set(second.ids.tolist()) - set(first.ids.tolist())
    assert len(fresh) == 1
    (new_id,) = fresh
    assert new_id >= first.next_id and new_id not in first.aliases
    # All planted clusters persisted: every old id is kept, nothing retired.
    assert set(first.ids.tolist()) <= set(second.ids.tolist())
    assert stats.matched == PLANTED and stats.new == 1 and stats.retired == 0
    # The fresh id is the new planted cluster (the last row of data.centres).
    new_vec = second.vectors[second.rows_of(np.array([new_id]))[0]]
    assert float(new_vec @ data.centres[-1]) > 0.9
    labels, _ = nearest(after, second.vectors)
    assert adjusted_rand_score(truth_after, labels) >= 0.9
    # Kept ids still mean the same planted cluster.
    for cid in first.ids.tolist():
        a = first.vectors[first.rows_of(np.array([cid]))[0]]
        b = second.vectors[second.rows_of(np.array([cid]))[0]]
        assert float(a @ b) > 0.9


def test_unmatched_old_ids_are_retired_with_aliases_to_live_ids(planted):
    _, x, _ = planted
    first, _ = recompute(x, None, k=PLANTED, seed=1, created_at_ms=0)
    fewer, stats = recompute(x, first, k=PLANTED - 2, seed=2, created_at_ms=1)
    assert stats.retired == 2 == len(fewer.aliases)
    assert stats.id_churn == pytest.approx(2 / PLANTED)
    assert set(fewer.aliases.values()) <= set(fewer.ids.tolist())
    assert set(fewer.ids.tolist()) | set(fewer.aliases) == set(first.ids.tolist())
    # Each retired id points at the new centre nearest to its old centre.
    for old, target in fewer.aliases.items():
        v = first.vectors[first.rows_of(np.array([old]))[0]].astype(np.float64)
        best = fewer.ids[int(np.argmax(fewer.vectors64 @ v))]
        assert target == best
    # And back up again: the fresh centres get ids never used before.
    more, stats = recompute(x, fewer, k=PLANTED, seed=3, created_at_ms=2)
    fresh = set(more.ids.tolist()) - set(fewer.ids.tolist())
    assert len(fresh) == 2 and min(fresh) >= fewer.next_id
    assert not fresh & set(first.ids.tolist())
    assert set(more.aliases) == set(fewer.aliases)


def test_elbow_finds_the_planted_k(planted):
    _, x, _ = planted
    assert PLANTED in k_candidates(2, 12)
    for seed in (0, 1, 2):
        cs, stats = recompute(x, None, k_range=(2, 12), seed=seed, created_at_ms=0)
        assert cs.k == PLANTED, stats.k_curve
        assert stats.k_curve is not None and set(stats.k_curve) == set(k_candidates(2, 12))
        curve = [stats.k_curve[k] for k in sorted(stats.k_curve)]
        assert curve[0] > curve[-1]


def test_elbow_rule_by_hand():
    # Chord from (2, 1.0) to (10, 0.0); the point farthest below it is k=4.
    assert elbow([2, 4, 6, 8, 10], [1.0, 0.2, 0.15, 0.1, 0.0]) == 4
    # A straight line has no elbow below the chord: the first k wins the tie at 0.
    assert elbow([2, 3, 4], [1.0, 0.5, 0.0]) == 2
    # Fewer than three points: the lowest inertia.
    assert elbow([3, 5], [0.4, 0.3]) == 5
    assert elbow([], []) == 0


def test_k_candidates():
    ks = k_candidates(2, 12)
    assert ks[0] == 2 and ks[-1] == 12 and len(ks) <= 8 and ks == sorted(set(ks))
    assert k_candidates(5, 5) == [5]
    assert k_candidates(1, 3) == [1, 2, 3]
    with pytest.raises(ValueError):
        k_candidates(0, 3)
    with pytest.raises(ValueError):
        k_candidates(4, 3)


def test_match_ids_keeps_ids_of_matched_centres_and_retires_the_rest():
    prev = CentreSet.create(np.eye(4)[:3], ids=[4, 7, 9], aliases={1: 9}, created_at_ms=0)
    # Row 0 is old 7 moved a little, row 1 is old 4, row 2 is new (orthogonal to all).
    new = unit(np.array([[0.0, 1.0, 0.1, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    ids, aliases, matched = match_ids(new, prev, threshold=0.5)
    assert ids.tolist() == [7, 4, 10]  # fresh ids start at prev.next_id = 10
    assert matched == 2
    # 9 is retired to its nearest new centre: row 0 (cosine 0.0995) -> id 7.
    assert aliases == {9: 7}


def test_match_ids_does_not_trade_a_good_match_for_a_rejected_one():
    """Hungarian matching must not give a stable centre a fresh id because the
    optimal *unthresholded* assignment pairs it with an id it is then refused.

    Old centres e1 (id 4), e2 (id 7), e3 (id 9). New centres, cosines by construction:
    - row 1 = e1                      -> 4 (1.0)
    - row 0: 0.8 to e2, 0.3 to e3     -> old 7 drifted a little: should keep 7
    - row 2: 0.6 to e2, 0.05 to e3    -> a new cluster, somewhat near 7
    Summed over all pairs, (row0->9, row2->7) = 0.9 beats (row0->7, row2->9) = 0.85,
    but row0->9 (0.3) is below the 0.5 threshold, so that choice ends with 7 on the
    weaker match (0.6) and a fresh id for the centre that is 0.8 to 7. Among
    assignments whose accepted pairs are above threshold, row0 -> 7 is best.
    """
    prev = CentreSet.create(np.eye(4)[:3], ids=[4, 7, 9], created_at_ms=0)
    new = np.array(
        [
            [0.0, 0.8, 0.3, np.sqrt(1 - 0.64 - 0.09)],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.6, 0.05, np.sqrt(1 - 0.36 - 0.0025)],
        ],
        dtype=np.float32,
    )
    ids, aliases, matched = match_ids(new, prev, threshold=0.5)
    assert matched == 2
    assert ids.tolist() == [7, 4, 10], "the 0.8 match lost id 7 to the 0.6 match"
    assert aliases == {9: 7}


def test_spherical_kmeans_validates_k(planted):
    _, x, _ = planted
    with pytest.raises(ValueError):
        spherical_kmeans(x[:5], 6)
    with pytest.raises(ValueError):
        spherical_kmeans(x[:5], 0)


def test_recompute_ignores_zero_rows_and_checks_dimensions(planted):
    _, x, truth = planted
    padded = np.vstack([x[:300], np.zeros((50, x.shape[1]), np.float32)])
    cs, stats = recompute(padded, None, k=3, seed=0, created_at_ms=0)
    assert stats.n_vectors == 300 and cs.sizes.sum() == 300
    with pytest.raises(ValueError):
        recompute(np.ones((10, 4), np.float32), cs, k=2)


def test_sampling_above_sample_size(planted):
    _, x, truth = planted
    cs, stats = recompute(x, None, k=PLANTED, seed=0, sample=400, created_at_ms=0)
    assert stats.n_sampled == 400 and stats.n_vectors == len(x)
    assert cs.sizes.sum() == len(x)  # every vector is assigned, not only the sample
    labels, _ = nearest(x, cs.vectors)
    assert adjusted_rand_score(truth, labels) >= 0.9


def test_warm_start_gives_the_same_clusters_back_on_unchanged_data():
    rng = np.random.default_rng(3)
    x = unit(rng.standard_normal((2000, 8)).astype(np.float32))  # no real structure
    first, _ = recompute(x, None, k=12, seed=0)
    warm, stats = recompute(x, first, k=12, seed=1)
    cold, cold_stats = recompute(x, first, k=12, seed=1, warm_start=False)
    assert stats.user_churn < 0.1 and stats.retired == 0
    assert cold_stats.user_churn > 2 * stats.user_churn  # a fresh k-means++ start reshuffles
    # neither fits the unchanged data better: the guard withholds both moves
    assert publish_verdict(cold_stats, max_churn=0.05, min_gain=0.02) is not None
    assert publish_verdict(stats, max_churn=stats.user_churn, min_gain=0.02) is None


def test_few_points_per_centre_print_no_faiss_warning(capfd):
    """eval's elbow and a bootstrap cluster few users per centre on purpose: faiss'
    'please provide at least N training points' must not flood the progress bars."""
    from stream.core.recompute import spherical_kmeans

    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((60, 8)).astype(np.float32))
    centres, inertia = spherical_kmeans(x, 12, seed=0)
    assert centres.shape == (12, 8) and 0 <= inertia < 1
    out, err = capfd.readouterr()
    assert "training points" not in err + out
