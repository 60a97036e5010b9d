"""Per-cluster CF tables: forward decay, deltas, bounds, blending, snapshots."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.cf import REBASE_EXPONENT, CFDelta, CFTable, make_delta

H = 1000.0  # half-life in ms: small, so a few thousand ms span many half-lives
T0 = 1_700_000_000_000


def _naive_scores(clusters, items, ts, weights, now, half_life):
    """(cluster, item) -> sum of w * 2**(-(now - t) / h): decay computed directly."""
    out: dict[tuple[int, int], float] = defaultdict(float)
    for c, i, t, w in zip(clusters, items, ts, weights, strict=True):
        out[(int(c), int(i))] += float(w) * 2.0 ** (-(now - int(t)) / half_life)
    return out


def _table_scores(cf: CFTable, now=None) -> dict[tuple[int, int], float]:
    clusters, keys, scores = cf.entries(now)
    return {(int(c), int(k)): float(s) for c, k, s in zip(clusters, keys, scores, strict=True)}


@st.composite
def click_batches(draw):
    """Several batches of clicks whose times move forward over up to ~300 half-lives,
    with some late clicks inside each batch; far enough to force rebases."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_batches = draw(st.integers(1, 8))
    step = draw(st.sampled_from([0.0, 5.0, 40.0, 70.0]))  # half-lives between batches
    batches, start = [], T0
    for _ in range(n_batches):
        n = int(rng.integers(1, 30))
        spread = draw(st.sampled_from([0.0, 1.0, 10.0]))  # half-lives inside a batch
        ts = start + rng.integers(0, int(spread * H) + 1, n)
        batches.append((rng.integers(0, 4, n), rng.integers(0, 6, n), ts, rng.uniform(0.1, 3.0, n)))
        start += int(step * H) + int(rng.integers(0, 3 * H))
    return batches


@settings(max_examples=150, deadline=None)
@given(click_batches())
def test_forward_decay_equals_naive_decay(batches):
    cf = CFTable(half_life_ms=H, prune_below=0.0)
    for c, i, t, w in batches:
        cf.learn_many(c, i, t, w)
    every = [np.concatenate(col) for col in zip(*batches, strict=True)]
    now = int(every[2].max())
    assert cf.clock_ms == now
    naive = _naive_scores(*every, now, H)
    got = _table_scores(cf)
    assert set(got) == set(naive)
    # Compare where the naive score is a normal float (not an underflowed denormal).
    for key, expected in naive.items():
        if expected > 1e-250:
            assert got[key] == pytest.approx(expected, rel=1e-5)
        else:
            assert got[key] <= 1e-240
    # Reading at another time is the same decay again.
    later = now + int(3 * H)
    for key, score in _table_scores(cf, later).items():
        if naive[key] > 1e-250:
            assert score == pytest.approx(naive[key] / 8.0, rel=1e-5)


def test_rebase_happens_and_keeps_scores():
    cf = CFTable(half_life_ms=H, prune_below=0.0)
    cf.learn_many([1], [5], [T0], [1.0])
    assert cf.landmark_ms == T0
    far = T0 + int((REBASE_EXPONENT + 10) * H)
    cf.learn_many([1], [6], [far], [1.0])
    assert cf.landmark_ms > T0  # the landmark moved forward
    got = _table_scores(cf)
    # 70 half-lives old: 2**-70; fresh click: 1.
    assert got[(1, 6)] == pytest.approx(1.0)
    assert got[(1, 5)] == pytest.approx(2.0**-70, rel=1e-9)
    assert np.isfinite(cf.entries(cf.landmark_ms)[2]).all()


def test_a_batch_with_an_epoch_zero_click_keeps_scores_finite():
    """ts=0 is a valid click time (schemas/click: minimum 0). One such click in the
    same batch as a current click spans ~20,000 daily half-lives: the current
    click must still score 1 and the old one 2**-19676 ~ 0, never inf or NaN."""
    day = 86_400_000
    cf = CFTable(half_life_ms=day, prune_below=0.0)
    cf.learn_many([1, 1], [5, 6], [0, T0], [1.0, 1.0])
    got = _table_scores(cf)
    assert np.isfinite(list(got.values())).all(), got
    assert got[(1, 6)] == pytest.approx(1.0)
    assert got[(1, 5)] == pytest.approx(0.0, abs=1e-300)
    assert cf.top(1, 1)[0].tolist() == [6]


def test_make_delta_aggregates_per_cluster_and_item():
    day = 86_400_000
    delta = make_delta(
        [2, 1, 2, 2, 1], [9, 9, 9, 8, 9], [T0, T0, T0 + day, T0, T0 + 2 * day], [1, 2, 1, 3, 1], day
    )
    assert isinstance(delta, CFDelta)
    # One entry per (cluster, item) in order of first appearance; values relative to the
    # newest ts (the landmark, T0 + 2 days):
    # (2, 9): 2**-2 + 2**-1 = 0.75; (1, 9): 2 * 2**-2 + 1 * 2**0 = 1.5; (2, 8): 3 * 2**-2 = 0.75.
    assert delta.cluster_ids.tolist() == [2, 1, 2]
    assert delta.item_keys.tolist() == [9, 9, 8]
    np.testing.assert_allclose(delta.values, [0.75, 1.5, 0.75])
    assert (delta.landmark_ms, delta.ts_min, delta.ts_max) == (T0 + 2 * day, T0, T0 + 2 * day)
    assert len(delta) == 3
    assert delta.for_cluster(2).item_keys.tolist() == [9, 8]
    assert len(delta.for_cluster(5)) == 0
    assert len(make_delta([], [], [], [], day)) == 0


@settings(max_examples=100, deadline=None)
@given(click_batches(), st.integers(1, 6))
def test_one_delta_or_several_give_equal_scores(batches, parts):
    every = [np.concatenate(col) for col in zip(*batches, strict=True)]
    whole = CFTable(half_life_ms=H, prune_below=0.0)
    whole.add(make_delta(*every, H))
    split = CFTable(half_life_ms=H, prune_below=0.0)
    n = len(every[0])
    cuts = np.linspace(0, n, parts + 1).astype(int)
    # Deltas arrive in reverse order: CF deltas from other workers are not ordered.
    for lo, hi in reversed(list(zip(cuts[:-1], cuts[1:], strict=True))):
        split.add(make_delta(*(col[lo:hi] for col in every), H))
    a, b = _table_scores(whole), _table_scores(split)
    assert whole.clock_ms == split.clock_ms
    assert set(a) == set(b)
    top = max(a.values())
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-12 * top)


def test_top_orders_by_score_and_decays_to_now():
    day = 86_400_000
    cf = CFTable(half_life_ms=day)
    cf.learn_many([7, 7, 7, 7, 8], [11, 12, 12, 13, 11], [0, 0, 0, 0, 0], [1.0, 1.0, 1.0, 0.5, 9])
    keys, scores = cf.top(7, 2)
    assert keys.tolist() == [12, 11]
    np.testing.assert_allclose(scores, [2.0, 1.0])
    keys, scores = cf.top(7, 10, now_ms=2 * day)  # two half-lives later: a quarter
    assert keys.tolist() == [12, 11, 13]
    np.testing.assert_allclose(scores, [0.5, 0.25, 0.125])
    assert cf.top(99, 5)[0].tolist() == []
    assert cf.top(7, 0)[0].tolist() == []
    assert cf.clusters == [7, 8]
    assert cf.cluster_totals() == pytest.approx({7: 3.5, 8: 9.0})


def test_compact_prunes_and_caps_keeping_the_best():
    cf = CFTable(half_life_ms=H, max_items=3, prune_below=0.5)
    # cluster 1: items 0..5 with scores 0.1, 0.6, 1, 2, 3, 4 ; cluster 2: 0.2 and 0.7
    cf.learn_many(
        [1] * 6 + [2, 2], [0, 1, 2, 3, 4, 5, 0, 1], [T0] * 8, [0.1, 0.6, 1, 2, 3, 4, 0.2, 0.7]
    )
    removed = cf.compact()
    # Pruned: 0.1 (cluster 1) and 0.2 (cluster 2); over the cap of 3: 0.6 and 1 (cluster 1).
    assert removed == 4
    got = _table_scores(cf)
    assert got == pytest.approx({(1, 5): 4.0, (1, 4): 3.0, (1, 3): 2.0, (2, 1): 0.7})
    assert len(cf) == 4
    assert cf.top(1, 10)[0].tolist() == [5, 4, 3]
    # The table keeps working after a compaction.
    cf.learn_many([1], [0], [T0], [10.0])
    assert cf.top(1, 1)[0].tolist() == [0]


def test_compact_uses_the_decayed_score_at_now():
    cf = CFTable(half_life_ms=H, prune_below=0.3)
    cf.learn_many([1, 1], [1, 2], [T0, T0], [1.0, 4.0])
    # Two half-lives later: 0.25 (pruned) and 1.0 (kept).
    assert cf.compact(now_ms=T0 + int(2 * H)) == 1
    assert cf.top(1, 5)[0].tolist() == [2]
    assert cf.compact() == 0  # nothing else to do


@settings(max_examples=60, deadline=None)
@given(click_batches(), st.integers(1, 4), st.sampled_from([0.0, 0.05, 0.5]))
def test_compact_property(batches, max_items, prune_below):
    cf = CFTable(half_life_ms=H, max_items=max_items, prune_below=prune_below)
    for col in batches:
        cf.learn_many(*col)
    before = _table_scores(cf)
    removed = cf.compact()
    after = _table_scores(cf)
    assert removed == len(before) - len(after)
    assert set(after) <= set(before)
    for key, score in after.items():
        assert score == pytest.approx(before[key], rel=1e-9)
        assert score >= prune_below
    for c in {c for c, _ in before}:
        eligible = sorted(
            (s for (cc, _), s in before.items() if cc == c and s >= prune_below), reverse=True
        )
        kept = sorted((s for (cc, _), s in after.items() if cc == c), reverse=True)
        assert len(kept) == min(max_items, len(eligible))
        assert kept == pytest.approx(eligible[: len(kept)], rel=1e-9)  # the best ones


def test_recommend_blends_by_share_and_honours_exclude():
    cf = CFTable(half_life_ms=H)
    cf.learn_many([1, 1, 1, 2, 2], [10, 11, 12, 11, 20], [T0] * 5, [4.0, 3.0, 1.0, 2.0, 5.0])
    keys, scores = cf.recommend([1, 2], [0.75, 0.25], n=10)
    # Blended by hand: 10: 3, 11: 0.75*3 + 0.25*2 = 2.75, 20: 1.25, 12: 0.75.
    assert keys.tolist() == [10, 11, 20, 12]
    np.testing.assert_allclose(scores, [3.0, 2.75, 1.25, 0.75])
    keys, _ = cf.recommend([1, 2], [0.75, 0.25], n=2, exclude=[10])
    assert keys.tolist() == [11, 20]
    # Clusters with id -1 or share 0 do not contribute.
    assert cf.recommend([-1, 2], [0.5, 0.5], n=5)[0].tolist() == [20, 11]
    assert cf.recommend([1, 2], [0.0, 1.0], n=5)[0].tolist() == [20, 11]
    assert cf.recommend([5], [1.0], n=5)[0].tolist() == []


@settings(max_examples=80, deadline=None)
@given(click_batches(), st.data())
def test_recommend_matches_a_naive_blend(batches, data):
    cf = CFTable(half_life_ms=H, prune_below=0.0)
    for col in batches:
        cf.learn_many(*col)
    scores = _table_scores(cf)
    clusters = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True))
    shares = data.draw(
        st.lists(st.floats(0.0, 1.0), min_size=len(clusters), max_size=len(clusters))
    )
    exclude = data.draw(st.lists(st.integers(0, 5), max_size=3))
    n = data.draw(st.integers(1, 8))
    # Documented approximation: each cluster contributes only its best
    # n + len(exclude) items (exclude as a set) to the blend.
    depth = n + len(set(exclude))
    blended: dict[int, float] = defaultdict(float)
    for c, share in zip(clusters, shares, strict=True):
        mine = sorted(((s, item) for (cc, item), s in scores.items() if cc == c), reverse=True)
        for s, item in mine[:depth]:
            if share > 0 and item not in exclude:
                blended[item] += share * s
    keys, values = cf.recommend(clusters, shares, n=n, exclude=exclude)
    assert not set(keys.tolist()) & set(exclude)
    assert len(keys) == min(n, len(blended))
    assert np.all(np.diff(values) <= 1e-12 * max(values.max(initial=0), 1e-300))
    expected = sorted(blended.values(), reverse=True)[: len(keys)]
    np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-300)
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        assert v == pytest.approx(blended[k], rel=1e-9, abs=1e-300)


@settings(max_examples=60, deadline=None)
@given(click_batches())
def test_load_entries_round_trip(batches):
    cf = CFTable(half_life_ms=H, prune_below=0.0)
    for col in batches:
        cf.learn_many(*col)
    clusters, keys, scores = cf.entries()
    restored = CFTable(half_life_ms=H, prune_below=0.0)
    restored.load_entries(clusters, keys, scores, at_ms=cf.clock_ms)
    assert restored.clock_ms == cf.clock_ms
    a, b = _table_scores(cf), _table_scores(restored)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-300)
    for c in cf.clusters:
        np.testing.assert_array_equal(cf.top(c, 3)[0], restored.top(c, 3)[0])
    # And the restored table keeps learning like the original.
    extra = ([0], [99], [cf.clock_ms + 500], [1.0])
    cf.learn_many(*extra)
    restored.learn_many(*extra)
    a, b = _table_scores(cf), _table_scores(restored)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-300)


def test_constructor_validates():
    for kwargs in (dict(half_life_ms=0), dict(max_items=0), dict(prune_below=-1)):
        with pytest.raises(ValueError):
            CFTable(**kwargs)


def test_compact_of_an_empty_table():
    assert CFTable().compact() == 0


def test_empty_table_reads():
    cf = CFTable()
    assert len(cf) == 0 and cf.clusters == []
    assert cf.top(1, 5)[0].tolist() == []
    assert cf.cluster_totals() == {}
    cf.add(CFDelta.empty())
    assert cf.landmark_ms is None and cf.clock_ms is None


def test_compact_when_every_entry_is_pruned():
    cf = CFTable(half_life_ms=H, prune_below=0.5)
    cf.learn_many([1, 2], [1, 2], [T0, T0], [1.0, 1.0])
    # Three half-lives later both scores are 0.125 < 0.5: everything goes.
    assert cf.compact(now_ms=T0 + int(3 * H)) == 2
    assert len(cf) == 0 and cf.clusters == []
    cf.learn_many([1], [3], [T0 + int(3 * H)], [1.0])  # and the table still works
    assert cf.top(1, 5)[0].tolist() == [3]


def test_table_compacts_itself_once_it_grows_past_the_threshold():
    from stream.core.cf import MIN_COMPACT_ENTRIES

    clusters_n = 1000
    per_cluster = MIN_COMPACT_ENTRIES // clusters_n + 1  # just over the threshold in all
    cf = CFTable(half_life_ms=H, max_items=10, prune_below=0.0)
    c = np.repeat(np.arange(clusters_n), per_cluster)
    i = np.tile(np.arange(per_cluster), clusters_n)
    w = 1.0 + np.tile(np.arange(per_cluster), clusters_n)  # item k scores k + 1
    cf.learn_many(c, i, np.full(len(c), T0), w)
    assert len(cf) == 10 * clusters_n
    # Each cluster kept its 10 best items.
    keys, scores = cf.top(7, 20)
    assert keys.tolist() == list(range(per_cluster - 1, per_cluster - 11, -1))
    np.testing.assert_allclose(scores, np.arange(per_cluster, per_cluster - 10, -1))
