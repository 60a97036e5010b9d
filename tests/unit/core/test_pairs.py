"""A batch's co-click pairs against the definition: clicks fed one by one."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.coclick import CoClickTable
from stream.core.pairs import GLOBAL, PairIncrements, make_pair_delta, pair_increments


def _batch(seed: int, n_users: int = 7, n: int = 60, recent: int = 5, top_m: int = 2):
    rng = np.random.default_rng(seed)
    recent_before = rng.integers(-1, 12, size=(n_users, recent))
    user_pos = rng.integers(0, n_users, n)
    item_keys = rng.integers(0, 12, n)
    ts = np.sort(rng.integers(0, 50_000, n))
    click_weights = rng.choice([1.0, 0.5, 2.0], n)
    inc_clicks = np.repeat(np.arange(n), top_m)
    inc_clusters = rng.integers(0, 4, n * top_m)
    shares = rng.random((n, top_m))
    inc_weights = (shares / shares.sum(axis=1, keepdims=True)).ravel() * click_weights[inc_clicks]
    inc_weights[rng.random(n * top_m) < 0.1] = 0.0  # a share that rounds to nothing
    return (
        recent_before,
        user_pos,
        item_keys,
        ts,
        click_weights,
        inc_clicks,
        inc_clusters,
        inc_weights,
    )


def _click_by_click(args, window: int, half_life: float, directed: bool) -> CoClickTable:
    recent_before, user_pos, item_keys, ts, cw, inc_clicks, inc_clusters, inc_w = args
    history = [[k for k in row if k >= 0][:window][::-1] for row in recent_before.tolist()]
    table = CoClickTable(half_life, max_neighbours=10**6, directed=directed)
    for e in range(len(item_keys)):
        scopes = [
            (int(c), float(w))
            for i, c, w in zip(inc_clicks, inc_clusters, inc_w, strict=True)
            if i == e
        ]
        hist = history[user_pos[e]]
        table.learn(scopes, list(hist), int(item_keys[e]), int(ts[e]), float(cw[e]))
        hist.append(int(item_keys[e]))
        del hist[:-window]
    return table


def _rows(table: CoClickTable) -> dict:
    scopes, items, others, values, *_ = table.entries()
    keys = zip(scopes.tolist(), items.tolist(), others.tolist(), strict=True)
    return dict(zip(keys, values.tolist(), strict=True))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("directed", [False, True])
def test_a_batchs_delta_is_its_clicks_fed_one_by_one(seed, window, directed):
    args = _batch(seed)
    half_life = 20_000.0
    want = _rows(_click_by_click(args, window, half_life, directed))
    recent_before, user_pos, item_keys, ts, cw, inc_clicks, inc_clusters, inc_w = args
    inc = pair_increments(recent_before, user_pos, item_keys, cw, inc_clicks, inc_clusters,
                          inc_w, window, directed)  # fmt: skip
    delta = make_pair_delta(inc, ts, half_life)
    assert (delta.a < delta.b).all() != directed
    triples = zip(delta.scopes.tolist(), delta.a.tolist(), delta.b.tolist(), strict=True)
    assert len(set(triples)) == len(delta)
    assert GLOBAL in set(delta.scopes.tolist())
    table = CoClickTable(half_life, max_neighbours=10**6, directed=directed)
    table.add(delta)
    got = _rows(table)
    assert got.keys() == want.keys()
    assert np.allclose([got[k] for k in want], list(want.values()), rtol=1e-9)


def test_per_click_deltas_sum_to_the_batchs():
    recent_before, user_pos, item_keys, ts, cw, inc_clicks, inc_clusters, inc_w = _batch(2)
    inc = pair_increments(recent_before, user_pos, item_keys, cw, inc_clicks, inc_clusters,
                          inc_w, 3)  # fmt: skip
    whole, parts = CoClickTable(1e4), CoClickTable(1e4)
    whole.add(make_pair_delta(inc, ts, 1e4))
    for i in np.unique(inc.clicks).tolist():
        parts.add(make_pair_delta(inc.select(inc.clicks == i), ts, 1e4))
    a, b = _rows(whole), _rows(parts)
    assert a.keys() == b.keys()
    assert np.allclose([a[k] for k in a], [b[k] for k in a])


def test_nothing_to_pair():
    inc = pair_increments(np.full((1, 3), -1), [0], [5], [1.0], [0], [2], [1.0], 4)
    assert len(inc) == 0 and len(make_pair_delta(inc, [0], 1e3)) == 0
    assert len(PairIncrements.concat([])) == 0


def test_directed_pairs_point_from_the_earlier_click():
    # user 0 had 9 before the batch, then clicks 5 and 2: 9 -> 5, 9 -> 2, 5 -> 2
    args = (np.array([[9, -1]]), [0, 0], [5, 2], [1.0, 1.0], [], [], [], 2)
    directed = pair_increments(*args, directed=True)
    assert sorted(zip(directed.a.tolist(), directed.b.tolist(), strict=True)) == [
        (5, 2),
        (9, 2),
        (9, 5),
    ]
    table = CoClickTable(1e9, directed=True)
    table.add(make_pair_delta(directed, [0, 0], 1e9))
    assert table.neighbours(GLOBAL, 9) == [(2, 1.0), (5, 1.0)]
    assert table.neighbours(GLOBAL, 2) == []  # nothing was clicked after 2
    both = CoClickTable(1e9)
    both.add(make_pair_delta(pair_increments(*args), [0, 0], 1e9))
    assert both.neighbours(GLOBAL, 2) == [(5, 1.0), (9, 1.0)]
