"""User records and the in-memory user store."""

from __future__ import annotations

import mmap

import numpy as np

from stream.core.state import InMemoryUserStore, _copied, blank_rows, user_dtype


def test_user_dtype_layout():
    dt = user_dtype(dim=4, top_m=2, recent=3)
    # 4*4 (mean) + 8 (weight) + 8 (t_ms) + 8 (clicks) + 2*8 (ids) + 2*4 (scores) + 3*8 (recent)
    assert dt.itemsize == 16 + 8 + 8 + 8 + 16 + 8 + 24
    assert dt["mean"].shape == (4,) and dt["mean"].base == np.dtype("<f4")
    assert dt["recent"].shape == (3,)


def test_blank_rows():
    rows = blank_rows(user_dtype(2, 2, 2), 3)
    assert (rows["cluster_ids"] == -1).all() and (rows["recent"] == -1).all()
    assert (rows["weight"] == 0).all() and (rows["mean"] == 0).all() and (rows["clicks"] == 0).all()


def test_unknown_users_read_blank_and_are_not_stored_until_written():
    store = InMemoryUserStore(user_dtype(2, 1, 1), capacity=1)
    batch = store.read_many(["a", "b"])
    assert len(store) == 0
    assert batch.rows["cluster_ids"].tolist() == [[-1], [-1]]
    batch.rows["clicks"] = [3, 4]
    batch.rows["mean"] = [[1, 0], [0, 1]]
    batch.rows["weight"] = [1.0, 0.0]
    store.write_many(batch)
    assert len(store) == 2
    again = store.read_many(["b", "zzz", "a"])
    assert again.rows["clicks"].tolist() == [4, 0, 3]
    # Rows read are copies: changing them does not change the store until written.
    again.rows["clicks"] = 99
    assert store.read_many(["a"]).rows["clicks"].tolist() == [3]


def test_write_without_handle_and_growth():
    dt = user_dtype(3, 2, 2)
    store = InMemoryUserStore(dt, capacity=1)
    ids = [f"u{i}" for i in range(500)]
    for start in range(0, 500, 37):
        batch = store.read_many(ids[start : start + 37])
        batch.rows["clicks"] = np.arange(start, start + len(batch.ids))
        batch.handle = None  # the store must look the users up again
        store.write_many(batch)
    assert len(store) == 500
    assert store.read_many(ids).rows["clicks"].tolist() == list(range(500))
    chunks = list(store.iter_chunks(size=64))
    assert [u for c, _ in chunks for u in c] == ids
    assert max(len(c) for c, _ in chunks) == 64
    assert np.concatenate([r for _, r in chunks])["clicks"].tolist() == list(range(500))


def test_vectors_returns_only_users_with_weight_as_unit_rows():
    store = InMemoryUserStore(user_dtype(2, 1, 1))
    batch = store.read_many(["a", "b", "c"])
    batch.rows["mean"] = [[0.3, 0.4], [0.0, 0.0], [0.0, 0.5]]
    batch.rows["weight"] = [2.0, 0.0, 1.0]
    store.write_many(batch)
    ids, x = store.vectors()
    assert ids == ["a", "c"]
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 1.0]], atol=1e-7)


def test_growth_fallback_copies_the_used_records():
    old = mmap.mmap(-1, 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    old[:16] = bytes(range(16))
    new = _copied(old, 10, 64)
    assert len(new) == 64 and new[:10] == bytes(range(10)) and new[10:] == bytes(54)
    assert old.closed


def test_read_in_place_stores_new_users_blank_and_keeps_changes_without_a_write():
    store = InMemoryUserStore(user_dtype(2, 2, 2), capacity=1)
    batch = store.read_in_place(["a", "b"])
    assert len(store) == 2 and batch.positions().tolist() == [0, 1]
    rows = batch.rows[batch.at]
    assert rows["cluster_ids"].tolist() == [[-1, -1], [-1, -1]]
    assert (rows["recent"] == -1).all() and (rows["clicks"] == 0).all()
    batch.rows["clicks"][batch.at] = [3, 4]  # changes go straight to the store
    store.write_many(batch)  # nothing left to do
    ids = [f"u{i}" for i in range(300)]  # grows the store many times over
    for start in range(0, 300, 41):
        got = store.read_in_place(ids[start : start + 41])
        got.rows["clicks"][got.at] = np.arange(start, start + len(got.ids))
    # the first batch was still alive through all that growth: its records are
    # an old copy now, no longer the store's
    assert batch.rows is not store.read_in_place(["a"]).rows
    again = store.read_in_place(["b", "u7", "a", "u299"])
    assert again.at.tolist() == [1, 9, 0, 301]
    assert again.rows["clicks"][again.at].tolist() == [4, 7, 3, 299]
    assert store.read_many(["a", "u123"]).rows["clicks"].tolist() == [3, 123]
    assert [u for c, _ in store.iter_chunks() for u in c] == ["a", "b", *ids]


def test_a_batch_read_as_copies_has_its_rows_in_order():
    store = InMemoryUserStore(user_dtype(2, 1, 1))
    assert store.read_many(["x", "y", "z"]).positions().tolist() == [0, 1, 2]
