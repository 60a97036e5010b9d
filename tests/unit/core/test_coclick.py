"""In-cluster item-to-item co-clicks: counting, decay, bounds, back-off."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.centres import CentreSet
from stream.core.clicks import ClickBatch
from stream.core.coclick import GLOBAL, CoClickTable
from stream.core.pairs import PairDelta
from stream.core.pipeline import EngineConfig, EngineState, process_batch


def test_pairs_count_both_ways_in_every_scope_and_globally():
    t = CoClickTable(half_life_ms=1e12)
    t.learn([(3, 0.75), (4, 0.25)], history=[1, 2], item=9, ts=0, weight=1.0)
    assert t.neighbours(3, 9) == [(1, 0.75), (2, 0.75)]
    assert t.neighbours(4, 1) == [(9, 0.25)]
    assert t.neighbours(GLOBAL, 9) == [(1, 1.0), (2, 1.0)]
    assert t.neighbours(GLOBAL, 5) == []
    t.learn([], history=[9], item=9, ts=0)  # an item is not its own neighbour
    assert dict(t.neighbours(GLOBAL, 9)) == {1: 1.0, 2: 1.0}


def test_decay_halves_an_older_co_click():
    t = CoClickTable(half_life_ms=1000.0)
    t.learn([], [1], 2, ts=0)
    t.learn([], [1], 3, ts=1000)
    (a, sa), (b, sb) = t.neighbours(GLOBAL, 1)
    assert (a, b) == (3, 2) and sa == pytest.approx(2 * sb)


def test_landmark_rebase_keeps_ratios():
    t = CoClickTable(half_life_ms=1.0)
    t.learn([], [1], 2, ts=0)
    t.learn([], [1], 3, ts=1)
    t.learn([], [5], 6, ts=10_000)  # forces a rebase (exponent past the bound)
    assert t.landmark_ms == 10_000
    row = dict(t.neighbours(GLOBAL, 1))
    assert row[3] == pytest.approx(2 * row[2])
    assert np.isfinite(list(row.values())).all()


def test_a_compaction_keeps_each_rows_largest_and_its_mass():
    t = CoClickTable(half_life_ms=1e12, max_neighbours=3)
    for other in range(20):
        for _ in range(other + 1):  # item `other` co-clicked other+1 times with item 100
            t.learn([], [other], 100, ts=0)
    assert len(t.row(GLOBAL, 100, n=100)[1]) == 20
    assert t.compact() == 17  # 100's row keeps 3 of 20; each reverse row has 1
    mass, top = t.row(GLOBAL, 100, n=100)
    assert top == [(19, 20.0), (18, 19.0), (17, 18.0)]
    assert mass == pytest.approx(sum(range(1, 21)))  # the prior reads all it ever saw
    assert t.neighbours(GLOBAL, 0) == [(100, 1.0)]  # rows are capped one by one


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("directed", [False, True])
def test_a_compaction_keeps_what_the_rule_says_row_by_row(seed, directed):
    rng = np.random.default_rng(seed)
    t = CoClickTable(half_life_ms=5e4, max_neighbours=4, prune_below=0.2, directed=directed)
    for ts in np.sort(rng.integers(0, 200_000, 12)).tolist():
        k = 400
        scopes, a = rng.integers(-1, 3, k), rng.integers(0, 40, k)
        b = a + rng.integers(1, 12, k)  # many rows over max_neighbours, some ties
        key = np.unique(np.stack([scopes, a, b], 1), axis=0)  # one entry per (scope, a, b)
        t.add(PairDelta(*key.T, rng.choice([0.5, 1.0, 2.0], len(key)), ts, ts, ts))
    scopes, items, others, scores, row_scopes, row_items, masses = t.entries()
    rows: dict = {}
    for s, i, o, v in zip(scopes.tolist(), items.tolist(), others.tolist(), scores.tolist(),
                          strict=True):  # fmt: skip
        rows.setdefault((s, i), []).append((o, v))
    want = {
        row: sorted(
            [(o, v) for o, v in entries if v >= 0.2],
            key=lambda ov: (-float(f"{ov[1] * t._decay_to(None) ** -1:.9g}"), ov[0]),
        )[:4]
        for row, entries in rows.items()
    }
    row_keys = zip(row_scopes.tolist(), row_items.tolist(), strict=True)
    mass_of = dict(zip(row_keys, masses.tolist(), strict=True))
    t.compact()
    for (scope, item), kept in want.items():
        mass, top = t.row(scope, item, n=100)
        assert [o for o, _ in top] == [o for o, _ in kept], (scope, item)
        assert [v for _, v in top] == pytest.approx([v for _, v in kept])
        if kept or mass_of[(scope, item)] >= 0.2:
            assert mass == pytest.approx(mass_of[(scope, item)])
        else:
            assert mass == 0.0  # kept nothing and decayed away: the row went


def test_the_table_compacts_itself_when_it_doubles():
    rng = np.random.default_rng(0)
    t = CoClickTable(half_life_ms=1e12, max_neighbours=5)
    k = 60_000  # 120k entries: past the first compaction point
    t.add(PairDelta(np.full(k, GLOBAL), np.arange(k) % 100, 100 + np.arange(k),
                    rng.random(k) + 0.01, 0, 0, 0))  # fmt: skip
    assert len(t) <= 100 * 5 + k  # 100 hub rows of 600 kept 5 each; the 60k leaf rows 1 each
    assert t.n_rows == 100 + k


def test_entries_load_back_into_the_same_table():
    rng = np.random.default_rng(1)
    t = CoClickTable(half_life_ms=5_000.0)
    for step in range(30):
        t.learn([(int(rng.integers(3)), 0.5)], rng.integers(0, 9, 3).tolist(),
                int(rng.integers(9)), ts=step * 700)  # fmt: skip
    back = CoClickTable(half_life_ms=5_000.0)
    back.load_entries(*t.entries(t.clock_ms), at_ms=t.clock_ms)
    for scope in (GLOBAL, 0, 1, 2):
        for item in range(9):
            mass, top = t.row(scope, item)
            mass2, top2 = back.row(scope, item)
            assert mass2 == pytest.approx(mass)
            assert [k for k, _ in top2] == [k for k, _ in top]
            assert np.allclose([v for _, v in top2], [v for _, v in top])


def test_scores_back_off_to_global_where_the_cluster_is_thin():
    t = CoClickTable(half_life_ms=1e12)
    t.learn([(7, 1.0)], [1], 2, ts=0)  # one co-click in cluster 7: 1 -> 2
    for _ in range(10):
        t.learn([(8, 1.0)], [1], 3, ts=0)  # others, elsewhere: 1 -> 3
    thin = t.scores([(7, 1.0)], recent=[1], exclude=set(), prior=100.0)
    trusted = t.scores([(7, 1.0)], recent=[1], exclude=set(), prior=0.0)
    assert thin[3] > thin[2]  # mostly the global row
    assert trusted == {2: 1.0}  # the cluster's row alone
    assert 2 not in t.scores([(7, 1.0)], recent=[1], exclude={2}, prior=0.0)


@pytest.mark.parametrize("directed", [False, True])
def test_process_batch_feeds_coclicks_in_click_order_and_batch_cuts_do_not_matter(directed):
    def run(cut: int) -> dict:
        config = EngineConfig(dim=2, top_m=1, coclick_window=2, coclick_directed=directed)
        state = EngineState.in_memory(config, coclick=True)
        state.items.upsert_many(["a", "b", "c"], np.eye(3, 2, dtype=np.float32) + 0.1)
        state.centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
        users = ["u", "u", "v", "u", "v"]
        items = ["a", "b", "a", "c", "c"]
        batch = ClickBatch.from_columns(users, items, [0, 1, 2, 3, 4])
        process_batch(state, batch.slice(0, cut))
        process_batch(state, batch.slice(cut, len(batch)))
        scopes, items, others, values, *_ = state.coclick.entries()
        rows: dict = {}
        for scope, item, other, v in zip(scopes.tolist(), items.tolist(), others.tolist(),
                                         values.tolist(), strict=True):  # fmt: skip
            rows.setdefault((scope, item), {})[other] = pytest.approx(v)
        return rows

    whole = run(5)
    assert run(1) == whole == run(3)
    keys = EngineState.in_memory(EngineConfig(dim=2)).items
    keys.upsert_many(["a", "b", "c"], np.eye(3, 2, dtype=np.float32))
    a, b, c = keys.keys.tolist()
    # u: a, b (pair a-b), then c with the window of 2 (b, a); v: a, then c
    assert whole[(GLOBAL, a)] == {b: pytest.approx(1.0), c: pytest.approx(2.0)}
    if directed:  # what was clicked after each
        assert whole[(GLOBAL, b)] == {c: pytest.approx(1.0)}
        assert (GLOBAL, c) not in whole
    else:
        assert whole[(GLOBAL, c)] == {b: pytest.approx(1.0), a: pytest.approx(2.0)}


def test_the_prior_weighs_decayed_mass_however_far_the_stream_is_from_the_landmark():
    """Stored values grow as 2**(t / h) from the landmark: the back-off must read
    the row's mass as of now, or after a few half-lives every cluster row is trusted."""
    got = []
    for start in (0, 200_000):  # the same co-clicks, 200 half-lives after the landmark
        t = CoClickTable(half_life_ms=1_000.0)
        t.learn([(8, 1.0)], [5], 6, ts=0)  # sets the landmark at 0
        t.learn([(7, 1.0)], [1], 2, ts=start)
        for _ in range(10):
            t.learn([(8, 1.0)], [1], 3, ts=start)
        scores = t.scores([(7, 1.0)], recent=[1], exclude=set(), prior=5.0)
        top = max(scores.values())
        got.append({k: round(v / top, 9) for k, v in scores.items()})
    assert got[0] == got[1]
    assert got[1][3] == 1.0  # the global row still outweighs the thin cluster row


def test_a_compaction_drops_rows_that_kept_nothing_and_decayed_away():
    t = CoClickTable(half_life_ms=1000.0, max_neighbours=3)
    t.learn([], [1], 2, ts=0)  # decays below prune_below by the next co-click
    t.learn([], [3], 4, ts=20_000)
    assert t.n_rows == 4
    t.compact()
    assert t.n_rows == 2 and t.row(GLOBAL, 1) == (0.0, []) and t.row(GLOBAL, 3)[1] == [(4, 1.0)]


def test_entries_whose_row_is_not_listed_are_refused():
    t = CoClickTable(half_life_ms=1e3)
    with pytest.raises(ValueError, match="row"):
        t.load_entries([-1], [1], [2], [1.0], [], [], [], at_ms=0)
