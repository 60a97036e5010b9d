"""State digests: equal for equal state, different after any real change."""

from __future__ import annotations

import numpy as np

from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable
from stream.core.digest import cf_digest, state_digest, users_digest
from stream.core.pairs import PairDelta
from stream.core.state import InMemoryUserStore, user_dtype

T0 = 1_700_000_000_000


def _store(seed=0, n=20):
    rng = np.random.default_rng(seed)
    store = InMemoryUserStore(user_dtype(4, 2, 3))
    batch = store.read_many([f"u{i}" for i in range(n)])
    batch.rows["mean"] = rng.standard_normal((n, 4))
    batch.rows["weight"] = 1.0
    batch.rows["clicks"] = rng.integers(1, 9, n)
    batch.rows["cluster_ids"] = rng.integers(0, 5, (n, 2))
    batch.rows["scores"] = rng.uniform(0, 1, (n, 2))
    store.write_many(batch)
    return store


def _cf(extra: float = 0.0):
    cf = CFTable(half_life_ms=3_600_000, prune_below=0.0)
    cf.learn_many([1, 1, 2, 2], [10, 11, 10, 12], [T0, T0, T0, T0 + 1000], [1.0, 2.0, 3.0, 0.5])
    if extra:
        cf.learn_many([1], [10], [T0 + 1000], [extra])
    return cf


def _digest(store, tables):
    return state_digest(store.iter_chunks(), tables)


def _change(store, user, field, value):
    b = store.read_many([user])
    b.rows[field] = value
    store.write_many(b)


def test_equal_input_gives_equal_digest_whatever_the_chunking():
    a = _digest(_store(), [_cf()])
    assert a == _digest(_store(), [_cf()])
    assert len(a) == 64 and int(a, 16) >= 0
    store = _store()
    assert users_digest(store.iter_chunks(size=3)) == users_digest(store.iter_chunks(size=1000))
    # Chunks in another order: users are hashed in id order.
    assert users_digest(reversed(list(store.iter_chunks(size=4)))) == users_digest(
        store.iter_chunks()
    )


def test_one_users_vector_changes_the_digest():
    base = _digest(_store(), [_cf()])
    store = _store()
    row = store.read_many(["u7"]).rows["mean"][0].copy()
    _change(store, "u7", "mean", row + np.array([0.0, 0.0, 0.05, 0.0]) * np.linalg.norm(row))
    assert _digest(store, [_cf()]) != base


def test_scaling_a_users_mean_does_not_change_the_digest():
    # Only the direction (the unit vector) is hashed.
    store = _store()
    row = store.read_many(["u3"]).rows["mean"][0].copy()
    _change(store, "u3", "mean", row * 2.0)
    assert _digest(store, [_cf()]) == _digest(_store(), [_cf()])


def test_a_membership_or_its_score_or_clicks_change_the_digest():
    base = _digest(_store(), [_cf()])
    for field, value in (
        ("cluster_ids", [[4, 3]]),
        ("scores", [[0.5, 0.123]]),
        ("clicks", 99),
    ):
        store = _store()
        old = store.read_many(["u2"]).rows[field].copy()
        assert not np.array_equal(old, np.asarray(value, dtype=old.dtype).reshape(old.shape))
        _change(store, "u2", field, value)
        assert _digest(store, [_cf()]) != base, field


def test_a_new_user_changes_the_digest():
    store = _store()
    base = _digest(store, [])
    b = store.read_many(["zz"])
    store.write_many(b)
    assert _digest(store, []) != base


def test_cf_score_above_the_floor_changes_the_digest():
    base = cf_digest([_cf()])
    assert cf_digest([_cf(extra=0.01)]) != base  # 1% on a score of ~1
    assert cf_digest([_cf()]) == base


def test_cf_scores_below_the_floor_are_ignored():
    cf = _cf()
    tiny = _cf()
    tiny.learn_many([3], [99], [T0 + 1000], [0.005])
    assert cf_digest([tiny], floor=0.01) == cf_digest([cf], floor=0.01)
    tiny.learn_many([3], [99], [T0 + 1000], [0.005])
    assert cf_digest([tiny], floor=0.01) != cf_digest([cf], floor=0.01)


def test_the_floor_is_the_tables_prune_below():
    cf, tiny = CFTable(3_600_000, prune_below=0.01), CFTable(3_600_000, prune_below=0.01)
    cf.learn_many([1], [10], [T0], [1.0])
    tiny.learn_many([1, 3], [10, 99], [T0, T0], [1.0, 0.009])
    assert cf_digest([tiny]) == cf_digest([cf])
    tiny.learn_many([3], [99], [T0], [0.002])
    assert cf_digest([tiny]) != cf_digest([cf])


def test_one_click_more_or_less_in_any_entry_changes_the_cf_digest():
    """Issue 23: one click more in any (cluster, item) entry of a table with
    scores up to ~100 changes the digest, also a click 10 half-lives old;
    the same clicks in another batching give the same digest."""
    rng = np.random.default_rng(5)
    n = 20_000
    clusters, items = rng.integers(0, 8, n), rng.integers(0, 20, n)
    ts = np.sort(rng.integers(T0, T0 + 2 * 3_600_000, n))
    weights = rng.uniform(0.5, 2.0, n)
    whole = CFTable(half_life_ms=3_600_000)
    whole.learn_many(clusters, items, ts, weights)
    pieces = CFTable(half_life_ms=3_600_000)
    for a in range(0, n, 37):
        pieces.learn_many(
            clusters[a : a + 37], items[a : a + 37], ts[a : a + 37], weights[a : a + 37]
        )
    base = cf_digest([whole])
    assert cf_digest([pieces]) == base
    assert whole.top(int(clusters[0]), 1)[1][0] > 50  # big entries, not only small ones
    hit = rng.choice(n, 50, replace=False)
    for i in hit.tolist():
        extra = CFTable(half_life_ms=3_600_000)
        extra.learn_many(clusters, items, ts, weights)
        old = max(int(ts[-1]) - 10 * 3_600_000, T0)  # 10 half-lives before the newest click
        extra.learn_many([clusters[i]], [items[i]], [old], [1.0])
        assert cf_digest([extra], at_ms=int(ts[-1])) != base, i


def test_cf_digest_is_independent_of_how_clusters_are_split_over_tables():
    whole = _cf()
    one = CFTable(half_life_ms=3_600_000, prune_below=0.0)
    one.learn_many([1, 1], [10, 11], [T0, T0], [1.0, 2.0])
    two = CFTable(half_life_ms=3_600_000, prune_below=0.0)
    two.learn_many([2, 2], [10, 12], [T0, T0 + 1000], [3.0, 0.5])
    # Scores are read at the newest time of all tables.
    assert cf_digest([one, two]) == cf_digest([whole])
    assert cf_digest([two, one]) == cf_digest([whole])


def test_cf_digest_depends_on_the_reading_time():
    cf = _cf()
    assert cf_digest([cf], at_ms=T0 + 1000) == cf_digest([cf])
    assert cf_digest([cf], at_ms=T0 + 3_600_000) != cf_digest([cf])


def test_empty_state_digest_is_stable():
    empty = InMemoryUserStore(user_dtype(2, 1, 1))
    assert state_digest(empty.iter_chunks(), []) == state_digest(empty.iter_chunks(), [])
    assert state_digest(empty.iter_chunks(), []) != state_digest(empty.iter_chunks(), [_cf()])


def _co(scopes, extra: float = 0.0) -> CoClickTable:
    """Co-clicks of scopes ``scopes`` only (split a table's scopes over several)."""
    t = CoClickTable(half_life_ms=3_600_000)
    for scope, history, item, ts in [(3, [10, 11], 12, T0), (4, [10], 11, T0 + 1000),
                                     (-1, [10, 11], 12, T0 + 500)]:  # fmt: skip
        if scope not in scopes:
            continue
        if scope >= 0:  # a cluster's pairs only (learn would add the global ones too)
            t.add(PairDelta(np.full(len(history), scope), np.array(history),
                            np.full(len(history), item), np.ones(len(history)), ts, ts, ts))  # fmt: skip
        else:
            t.add(PairDelta(np.array([-1, -1]), np.array(history), np.array([item, item]),
                            np.array([1.0 + extra, 1.0]), ts, ts, ts))  # fmt: skip
    return t


def test_one_co_click_more_changes_the_digest_and_splitting_the_scopes_does_not():
    store = _store()
    whole = state_digest(store.iter_chunks(), [], coclick_tables=[_co({3, 4, -1})])
    split = state_digest(store.iter_chunks(), [], coclick_tables=[_co({3}), _co({4, -1})])
    assert whole == split
    more = state_digest(store.iter_chunks(), [], coclick_tables=[_co({3, 4, -1}, extra=1e-6)])
    assert more != whole
    # tables holding nothing: the digest of a state without co-clicks
    empty = state_digest(store.iter_chunks(), [], coclick_tables=[CoClickTable(1000.0)])
    assert empty == state_digest(store.iter_chunks(), []) != whole


def test_a_sum_one_bit_under_a_power_of_ten_digests_as_that_power():
    """0.9999999999999999 and 1.0 are one number to 9 digits (another batching
    of the same co-clicks gave each); the exponent must not tell them apart."""
    a, b = CFTable(3_600_000, prune_below=0.0), CFTable(3_600_000, prune_below=0.0)
    a.learn_many([1], [10], [T0], [0.9999999999999999])
    b.learn_many([1], [10], [T0], [1.0])
    assert cf_digest([a]) == cf_digest([b])
    b.learn_many([1], [10], [T0], [1e-8])  # the 9th digit
    assert cf_digest([a]) != cf_digest([b])
