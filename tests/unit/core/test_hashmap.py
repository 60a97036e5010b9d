"""Int64Map against a plain dict model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.hashmap import EMPTY, Int64Map, group_keys, sum_by_pair

I64 = np.iinfo(np.int64)
SPECIAL = [EMPTY, EMPTY + 1, -1, 0, 1, I64.max, I64.max - 1, -(2**32), 2**32]
KEYS = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-50, 50),  # many repeats and negatives
    st.integers(int(I64.min), int(I64.max)),
)


def _fold(key: int) -> int:
    """The documented key space: EMPTY is folded onto its neighbour EMPTY + 1."""
    return int(EMPTY) + 1 if key == int(EMPTY) else key


OPS = st.lists(
    st.tuples(st.sampled_from(["get_or_insert", "get"]), st.lists(KEYS, max_size=40)),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, capacity=st.sampled_from([1, 2, 8, 1024]))
def test_get_or_insert_and_get_agree_with_a_dict(ops, capacity):
    m = Int64Map(capacity)
    model: dict[int, int] = {}
    for op, keys in ops:
        arr = np.array(keys, dtype=np.int64)
        if op == "get_or_insert":
            out = m.get_or_insert(arr)
            for k in keys:
                model.setdefault(_fold(k), len(model))
            expected = [model[_fold(k)] for k in keys]
        else:
            out = m.get(arr)
            expected = [model.get(_fold(k), -1) for k in keys]
        assert out.dtype == np.int64
        assert out.tolist() == expected
        assert len(m) == len(model)
    keys, values = m.items()
    assert dict(zip(keys.tolist(), values.tolist(), strict=True)) == model


def test_empty_key_is_a_usable_key():
    m = Int64Map()
    assert m.get(np.array([EMPTY])).tolist() == [-1]
    assert m.get_or_insert(np.array([EMPTY, 5, EMPTY])).tolist() == [0, 1, 0]
    assert m.get(np.array([EMPTY, 5])).tolist() == [0, 1]
    assert len(m) == 2


def test_growth_and_rehash_keep_every_entry():
    m = Int64Map(1)
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(I64.min, I64.max, 20_000, dtype=np.int64))
    keys = rng.permutation(keys)
    for chunk in np.array_split(keys, 37):  # many rehashes along the way
        m.get_or_insert(chunk)
    assert len(m) == len(keys)
    # Values are dense row numbers in order of first appearance.
    np.testing.assert_array_equal(m.get(keys), np.arange(len(keys)))
    # A dense run of keys, negative ones included, through a tiny initial table.
    seq = np.arange(-5000, 5000, dtype=np.int64)
    m2 = Int64Map(4)
    np.testing.assert_array_equal(m2.get_or_insert(seq), np.arange(len(seq)))
    np.testing.assert_array_equal(m2.get(seq[::-1]), np.arange(len(seq))[::-1])


def test_empty_inputs():
    m = Int64Map()
    assert m.get(np.zeros(0, dtype=np.int64)).tolist() == []
    assert m.get_or_insert(np.zeros(0, dtype=np.int64)).tolist() == []
    assert len(m) == 0
    assert m.items()[0].tolist() == []


def test_group_keys_numbers_groups_in_order_of_first_appearance():
    first, pos, rank = group_keys(np.array([7, 3, 7, 7, 5, 3], dtype=np.int64))
    assert first.tolist() == [0, 1, 4]
    assert pos.tolist() == [0, 1, 0, 0, 2, 1]
    assert rank.tolist() == [0, 0, 1, 2, 0, 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=60))
def test_group_keys_agrees_with_a_dict(keys):
    first, pos, rank = group_keys(np.array(keys, dtype=np.int64))
    seen: dict[int, int] = {}
    count: dict[int, int] = {}
    for i, k in enumerate(keys):
        if k not in seen:
            seen[k] = len(seen)
            assert first[seen[k]] == i
        assert pos[i] == seen[k]
        assert rank[i] == count.get(k, 0)
        count[k] = count.get(k, 0) + 1
    assert len(first) == len(seen)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 3), st.floats(0, 10)), max_size=60))
def test_sum_by_pair_agrees_with_a_dict(rows):
    a = np.array([r[0] for r in rows], dtype=np.int64)
    b = np.array([r[1] for r in rows], dtype=np.int64)
    v = np.array([r[2] for r in rows], dtype=np.float64)
    got_a, got_b, sums = sum_by_pair(a, b, v)
    model: dict[tuple[int, int], float] = {}
    for x, y, w in rows:
        model[(x, y)] = model.get((x, y), 0.0) + w
    assert list(zip(got_a.tolist(), got_b.tolist(), strict=True)) == list(model)
    np.testing.assert_allclose(sums, list(model.values()))
