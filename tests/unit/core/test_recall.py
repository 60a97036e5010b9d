"""Cluster recall: the blend of candidate sources and where each served item came from."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.centres import CentreSet
from stream.core.clicks import ClickBatch
from stream.core.pipeline import EngineConfig, EngineState, process_batch, recommend
from stream.core.recall import (
    RecallWeights,
    all_cluster_ids,
    blend,
    candidates,
    filled,
    popular_in,
    recall,
)


def small_state() -> EngineState:
    state = EngineState.in_memory(EngineConfig(dim=2, top_m=1), coclick=True)
    vectors = np.array([[1, 0], [1, 0.2], [1, -0.2], [0, 1], [0.2, 1]], dtype=np.float32)
    state.items.upsert_many(["a", "b", "c", "x", "y"], vectors)
    state.centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
    # the sport cluster: many members click a then b; one clicks c alone
    users = [f"s{i}" for i in range(6) for _ in range(2)] + ["lone"]
    items = ["a", "b"] * 6 + ["c"]
    process_batch(state, ClickBatch.from_columns(users, items, list(range(len(users)))))
    process_batch(state, ClickBatch.from_columns(["new"], ["a"], [100]))
    return state


def key(state, item: str) -> int:
    return int(state.items.keys[state.items.rows_for([item])[0]])


def test_each_source_finds_what_it_should():
    state = small_state()
    row = state.users.read_many(["new"]).rows[0]
    parts = candidates(state, row, n=5, weights=RecallWeights(cf=1, coclick=1, vector=1))
    a, b, c = key(state, "a"), key(state, "b"), key(state, "c")
    assert a not in parts["cf"]  # the user's own recent item is excluded
    assert max(parts["cf"], key=parts["cf"].get) == b  # the cluster clicks b most
    assert max(parts["coclick"], key=parts["coclick"].get) == b  # a's members click b next
    assert c not in parts["coclick"]  # nobody clicked c after a
    assert set(parts["vector"]) >= {b, c}  # both near a's direction


def test_blend_weights_and_source_labels():
    parts = {"cf": {1: 2.0, 2: 1.0}, "coclick": {3: 10.0}, "vector": {2: 0.9, 4: 0.3}}
    got = blend(parts, RecallWeights(cf=1, coclick=0.5, vector=1), n=4)
    assert got == [(2, 1.5, "vector"), (1, 1.0, "cf"), (3, 0.5, "coclick"), (4, 1 / 3, "vector")]
    off = blend(parts, RecallWeights(cf=1, coclick=0, vector=0), n=4)
    assert [k for k, _, _ in off] == [1, 2]


def test_recommend_says_which_source_served_each_item():
    state = small_state()
    got = recommend(state, "new", n=3, with_source=True)
    assert [item for item, _, _ in got][0] == "b"
    assert {source for _, _, source in got} <= {"cf", "coclick", "vector"}
    plain = recommend(state, "new", n=3)
    assert [(i, s) for i, s, _ in got] == plain


def test_recall_without_any_history_is_empty():
    state = small_state()
    row = state.users.read_many(["nobody"]).rows[0]
    assert recall(state, row, n=5) == []


def test_embedding_recall_ranks_given_vectors_only_when_there_are_any():
    """A learnt vector is its clickers' mean and sits nearer each of them than any
    given vector: with given vectors about, it must not be recommended by it."""
    from stream.core.items import ItemCatalog
    from stream.core.recall import vector_scores

    row = {"weight": np.float32(1.0), "mean": np.array([1.0, 0.1], dtype=np.float32)}
    cat = ItemCatalog(dim=2)
    cat.set_learnt(cat.rows_for(["learnt"]), np.array([[1.0, 0.1]], dtype=np.float32))
    assert set(vector_scores(cat, row, set(), depth=5)) == {_key(cat, "learnt")}  # none given
    cat.upsert_many(["near", "far"], np.array([[1, 0.5], [0, 1]], dtype=np.float32))
    got = vector_scores(cat, row, set(), depth=5)
    assert _key(cat, "learnt") not in got and max(got, key=got.get) == _key(cat, "near")


def _key(cat, item: str) -> int:
    return int(cat.keys[cat.rows_for([item])[0]])


def test_history_prior_moves_co_click_weight_from_clusters_to_global_rows():
    """A user known from one click leans on the global rows; one with a long
    history on the cluster's; with the prior 0 the clusters get it all."""
    from stream.core.coclick import GLOBAL
    from stream.core.recall import coclick_scores

    rows = {(7, 1): (10.0, [(2, 10.0)]), (GLOBAL, 1): (10.0, [(3, 10.0)])}

    def row_of(scope, item):
        return rows.get((scope, item), (0.0, []))

    weights = RecallWeights(coclick_prior=0.0, coclick_history_prior=5.0)
    new = coclick_scores(row_of, [(7, 1.0)], [1], set(), weights, clicks=1)
    assert new == pytest.approx({2: 10 / 6, 3: 10 * 5 / 6})
    old = coclick_scores(row_of, [(7, 1.0)], [1], set(), weights, clicks=45)
    assert old == pytest.approx({2: 9.0, 3: 1.0})
    off = RecallWeights(coclick_prior=0.0, coclick_history_prior=0.0)
    assert coclick_scores(row_of, [(7, 1.0)], [1], set(), off, clicks=1) == {2: 10.0}


def test_candidates_weigh_the_global_rows_by_the_users_history():
    """Through :func:`candidates` (what eval and the worker's blend read): the
    news cluster's members read y after a, the sport cluster's b; a sport user
    with one click gets more of y (the global rows) than one with many."""
    state = small_state()
    users = [f"n{i}" for i in range(4) for _ in range(4)]
    items = ["x", "y", "a", "y"] * 4
    process_batch(state, ClickBatch.from_columns(users, items, [200 + i for i in range(16)]))
    row = state.users.read_many(["new"]).rows[0].copy()
    weights = RecallWeights(cf=0, coclick=1, coclick_prior=0.0, coclick_history_prior=5.0)
    b, y = key(state, "b"), key(state, "y")
    row["clicks"] = 1
    new = candidates(state, row, n=5, weights=weights)["coclick"]
    row["clicks"] = 1000
    old = candidates(state, row, n=5, weights=weights)["coclick"]
    assert new[y] > old[y] > 0 and new[y] / new[b] > old[y] / old[b]


def test_popular_is_every_clicks_weight_summed_over_the_clusters_tables():
    """top_m 2 splits each click between two clusters by share, a click of a user
    without a cluster goes to the global scope; the sum over all the tables must
    be each item's click weight (a day's half-life decays nothing measurable
    over these milliseconds)."""
    state = EngineState.in_memory(EngineConfig(dim=2, top_m=2, cf_half_life_s=86_400))
    state.items.upsert_many(["a", "b", "c"], np.array([[1, 0], [1, 1], [0, 1]], np.float32))
    state.centres = CentreSet.create([[1, 0], [0, 1], [1, 1]], created_at_ms=0)
    # "d" has no vector: u4, who clicks only d, has no cluster (the global scope counts it)
    users = ["u1", "u2", "u2", "u3", "u1", "u3", "u3", "u4", "u1"]
    items = ["a", "b", "a", "c", "c", "c", "b", "d", "d"]
    weights = [1.0, 0.5, 2.0, 1.0, 1.0, 0.25, 1.0, 0.75, 1.0]
    process_batch(state, ClickBatch.from_columns(users, items, list(range(9)), weights))
    assert state.users.read_many(["u4"]).rows[0]["cluster_ids"][0] < 0
    got = popular_in(state.cf, all_cluster_ids(state.centres), depth=10)
    want = {"a": 3.0, "b": 1.5, "c": 2.25, "d": 1.75}
    assert {state.items.id_of_key(k): round(v, 6) for k, v in got.items()} == want
    # a merged-away cluster's table still counts: its id stays among the aliases
    merged = CentreSet.create([[1, 0], [0, 1]], created_at_ms=1)
    merged = type(merged)(**{**merged.__dict__, "aliases": {2: 0}})
    assert all_cluster_ids(merged) == [0, 1, 2, -1] and all_cluster_ids(None) == [-1]
    # a short list is filled with the most popular items it lacks, the excluded left out
    a, b, c = (key(state, i) for i in "abc")
    d = key(state, "d")
    assert filled([(b, 0.9, "cf")], got, 3, {c}) == [
        (b, 0.9, "cf"), (a, 0.0, "popular"), (d, 0.0, "popular"),
    ]  # fmt: skip
