"""RocksDB stores of a worker, without a broker."""

from __future__ import annotations

import numpy as np
import pytest
from rocksdict import Options

from stream.app import rocks, stores
from stream.app.cfstore import CFPartitionStore
from stream.app.restore import CompleteFlushes
from stream.app.stores import UserPartitionStore
from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable
from stream.core.state import user_dtype
from stream.errors import ConfigError

DTYPE = user_dtype(dim=4, top_m=2, recent=3)


def _write(store, ids, clicks, primary):
    batch = store.read_many(ids)
    batch.rows["clicks"] = clicks
    batch.rows["weight"] = 1.0
    batch.rows["mean"][:, 0] = 1.0
    before = batch.rows["cluster_ids"][:, 0].copy()
    batch.rows["cluster_ids"][:, 0] = primary
    store.write_many(batch)
    store.stage_sizes(before, batch.rows["cluster_ids"][:, 0])


def _flush(store, next_offset, clean=False, changelog_next=None):
    records = store.begin_flush(next_offset, clean)
    store.write_flush(changelog_next)
    store.end_flush()
    return records


def test_flush_writes_rows_offsets_and_sizes_together(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a", "b", "c"], [1, 2, 3], [7, 7, 8])
    assert store.dirty_count == 3 and len(store) == 3 and store.current_sizes == {7: 2, 8: 1}
    _flush(store, next_offset=3, changelog_next=10)
    assert store.dirty_count == 0
    store.close()
    again = UserPartitionStore(tmp_path / "p0", DTYPE)
    assert (again.next_offset, again.changelog_next, again.n_users) == (3, 10, 3)
    assert again.sizes == {7: 2, 8: 1} and again.clean_offset == -1
    assert again.read_many(["b", "zz"]).rows["clicks"].tolist() == [2, 0]
    assert sorted(again.user_ids()) == ["a", "b", "c"]


def test_writes_during_a_flush_in_flight_go_to_the_next_flush(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a", "b"], [1, 1], [7, 7])
    taken = store.begin_flush(2)
    assert store.flushing and store.dirty_count == 0
    with pytest.raises(RuntimeError, match="in flight"):
        store.begin_flush(2)
    _write(store, ["b", "c"], [2, 2], [7, 8])  # b again, c new
    # the users and sizes of the flush in flight still count
    assert len(store) == 3 and store.current_sizes == {7: 2, 8: 1}
    assert store.read_many(["a", "b"]).rows["clicks"].tolist() == [1, 2]
    with pytest.raises(RuntimeError):
        store._clear_clean_cache()  # its rows are not in RocksDB yet
    store.write_flush(changelog_next=5)
    store.end_flush()
    assert not store.flushing and store.next_offset == 2 and store.n_users == 2
    assert len(store) == 3 and store.dirty_count == 2
    assert sorted(k for k, _ in taken if k.startswith(b"u:")) == [b"u:a", b"u:b"]
    second = _flush(store, next_offset=4)
    assert sorted(k for k, _ in second if k.startswith(b"u:")) == [b"u:b", b"u:c"]
    store.close()
    again = UserPartitionStore(tmp_path / "p0", DTYPE)
    assert (again.next_offset, again.n_users, again.sizes) == (4, 3, {7: 2, 8: 1})
    assert again.read_many(["a", "b", "c"]).rows["clicks"].tolist() == [1, 2, 2]


def test_reset_during_a_flush_in_flight_goes_back_to_the_last_ended_one(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a"], [1], [7])
    _flush(store, next_offset=1)
    _write(store, ["a", "b"], [3, 3], [8, 8])
    store.begin_flush(2)
    store.reset()
    assert not store.flushing and (store.next_offset, len(store)) == (1, 1)
    assert store.read_many(["a", "b"]).rows["clicks"].tolist() == [1, 0]


def test_reset_drops_everything_after_the_last_flush(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a"], [1], [7])
    _flush(store, next_offset=1)
    _write(store, ["a", "b"], [5, 5], [8, 8])
    assert store.read_many(["a"]).rows["clicks"].tolist() == [5]  # dirty rows are read back
    store.reset()
    assert store.read_many(["a", "b"]).rows["clicks"].tolist() == [1, 0]
    assert (store.next_offset, len(store), store.current_sizes) == (1, 1, {7: 1})


def test_only_dirty_rows_are_flushed_and_a_clean_hand_over_is_marked(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a", "b"], [1, 1], [7, 7])
    _flush(store, next_offset=2)
    _write(store, ["b"], [2], [7])
    records = _flush(store, next_offset=3, clean=True)
    users = [k for k, _ in records if k.startswith(b"u:")]
    assert users == [b"u:b"] and store.clean_offset == 3


def test_changelog_records_rebuild_an_equal_store(tmp_path):
    source = UserPartitionStore(tmp_path / "src", DTYPE)
    _write(source, ["a", "b"], [1, 2], [3, 4])
    records = _flush(source, next_offset=5)
    copy = UserPartitionStore(tmp_path / "copy", DTYPE)
    # every record but the flush's begin marker is state
    assert copy.apply_changelog(records, next_offset=len(records)) == len(records) - 1
    assert (copy.next_offset, copy.n_users, copy.sizes) == (5, 2, {3: 1, 4: 1})
    a = dict(zip(*next(source.iter_chunks()), strict=True))
    b = dict(zip(*next(copy.iter_chunks()), strict=True))
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


_CRASHING_OWNER = """
import os, sys
import numpy as np
from stream.app.stores import UserPartitionStore
from stream.core.state import user_dtype
store = UserPartitionStore(sys.argv[1], user_dtype(dim=4, top_m=2, recent=3))
for start, clicks in ((0, 1), (2, 2)):
    batch = store.read_many(["a", "b"])
    batch.rows["clicks"] = clicks
    store.write_many(batch)
    records = store.begin_flush(start + 2)
    store.write_flush(None)
    store.end_flush()
    if start == 0:
        store._db.flush()  # the first flush reaches a table file, the second does not
store.mark_inflight(5)
sys.stdout.buffer.write(repr(records).encode())
sys.stdout.flush()
os._exit(1)  # killed: no close
"""


def test_a_crash_may_lose_the_last_flushes_from_the_store_and_the_changelog_has_them(tmp_path):
    """Flushes skip RocksDB's log: a killed owner's store goes back to an earlier
    flush, whole; the in-flight marker (logged) survives; the changelog
    records of the lost flush bring the store forward."""
    import ast
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_OWNER, str(tmp_path / "p0")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr.decode()
    lost = ast.literal_eval(done.stdout.decode())
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    assert store.next_offset == 2  # the first flush, not the second
    assert store.read_many(["a", "b"]).rows["clicks"].tolist() == [1, 1]
    assert store.inflight() == 5
    store.apply_changelog(lost, next_offset=len(lost))
    assert store.next_offset == 4
    assert store.read_many(["a", "b"]).rows["clicks"].tolist() == [2, 2]


def test_a_restore_applies_whole_flushes_only(tmp_path):
    source = UserPartitionStore(tmp_path / "src", DTYPE)
    _write(source, ["a", "b"], [1, 1], [3, 3])
    first = _flush(source, next_offset=2)
    _write(source, ["a", "b"], [2, 2], [3, 3])
    cut_off = _flush(source, next_offset=4)[:2]  # a crash after its begin and one row
    source.reset()  # the worker restarts from the first flush and replays
    _write(source, ["b"], [7], [4])
    last = _flush(source, next_offset=3)
    log = [*first, *cut_off, *last]
    cut = CompleteFlushes()
    records, position = cut.feed((i, k, v) for i, (k, v) in enumerate(log))
    assert position == len(log) and cut.dropped == 2 and cut.pending == []
    copy = UserPartitionStore(tmp_path / "copy", DTYPE)
    copy.apply_changelog(records, position)
    # a is as the first flush left it: the cut-off flush's row of a is not applied
    assert copy.read_many(["a", "b"]).rows["clicks"].tolist() == [1, 7]
    assert (copy.next_offset, copy.sizes) == (3, {3: 1, 4: 1})


def test_a_store_written_with_other_settings_is_refused(tmp_path):
    UserPartitionStore(tmp_path / "p0", DTYPE).close()
    with pytest.raises(ConfigError, match="other settings"):
        UserPartitionStore(tmp_path / "p0", user_dtype(dim=8, top_m=2, recent=3))


def test_the_cache_is_bounded_and_reads_come_back_from_disk(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE, cache_rows=1024)
    ids = [f"u{i}" for i in range(3000)]
    for start in range(0, 3000, 500):
        if store.room() < 500:
            _flush(store, next_offset=start)
        _write(store, ids[start : start + 500], np.arange(start, start + 500), 1)
        assert len(store._cache_keys) <= 1024
    _flush(store, next_offset=3000)
    assert store.read_many(ids[:3]).rows["clicks"].tolist() == [0, 1, 2]
    assert len(store) == 3000


def _on_disk(store, n_users):
    """The store's RocksDB memtable written out to table files (with their
    bloom filters), so reads below go through the table options."""
    store._db.flush()
    files = int(store._db.property_value("rocksdb.num-files-at-level0") or 0)
    assert files >= 1, f"no table file for {n_users} users"


def test_present_and_absent_users_read_right_from_table_files(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE, cache_rows=1024)
    ids = [f"u{i}" for i in range(0, 6000, 2)]  # odd ids never written
    for start in range(0, len(ids), 1000):
        _flush(store, next_offset=start)
        store._clear_clean_cache()
        _write(store, ids[start : start + 1000], np.arange(start, start + 1000), 1)
    _flush(store, next_offset=len(ids))
    _on_disk(store, len(ids))
    store._clear_clean_cache()
    asked = [f"u{i}" for i in range(0, 6000)]
    batch = store.read_many(asked)
    _, new = batch.handle
    assert new.tolist() == [i % 2 == 1 for i in range(6000)]  # bloom: no false "absent"
    assert batch.rows["clicks"][::2].tolist() == list(range(len(ids)))


def test_a_store_written_with_rocksdb_defaults_opens_with_the_tuned_options(tmp_path, monkeypatch):
    """Stores written before the point-lookup options (snappy blocks, no bloom
    filters) are read as they are; new table files get the new options."""
    with monkeypatch.context() as patch:
        patch.setattr(rocks, "store_options", lambda: _default_options())
        old = UserPartitionStore(tmp_path / "p0", DTYPE)
        _write(old, ["a", "b"], np.array([3, 4]), 1)
        _flush(old, next_offset=2)
        _on_disk(old, 2)
        old.close()
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    assert store.next_offset == 2
    assert store.read_many(["a", "b", "c"]).rows["clicks"].tolist() == [3, 4, 0]
    _write(store, ["c"], np.array([5]), 2)
    _flush(store, next_offset=3)
    _on_disk(store, 3)
    store._clear_clean_cache()
    assert store.read_many(["a", "b", "c"]).rows["clicks"].tolist() == [3, 4, 5]
    assert store.current_sizes == {1: 2, 2: 1}


def test_a_user_record_of_the_wrong_size_is_refused(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a", "b"], np.array([1, 2]), 1)
    _flush(store, next_offset=2)
    store._clear_clean_cache()
    size = DTYPE.itemsize
    store._db.put(stores.user_key("b"), b"short")
    with pytest.raises(ConfigError, match="has 5 bytes"):
        store.read_many(["a", "b", "c"])
    # two wrong sizes that add up to two right ones are refused too
    store._db.put(stores.user_key("x"), b"x" * (size + 8))
    store._db.put(stores.user_key("y"), b"y" * (size - 8))
    with pytest.raises(ConfigError, match=f"has {size + 8} bytes"):
        store.read_many(["x", "y"])
    assert store.read_many(["a", "c"]).rows["clicks"].tolist() == [1, 0]


def _default_options():
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    return options


def test_a_full_cache_with_dirty_rows_refuses_to_drop_them(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE, cache_rows=1024)
    _write(store, [f"u{i}" for i in range(1000)], np.ones(1000), 1)
    with pytest.raises(RuntimeError, match="flush"):
        _write(store, [f"v{i}" for i in range(100)], np.ones(100), 1)


def test_inflight_marker(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    assert store.inflight() == -1
    store.mark_inflight(41)
    assert store.inflight() == 41


def test_inflight_marker_keeps_the_maximum_across_a_replay_and_a_reopen(tmp_path):
    """A replay after a crash re-runs batches below the marker: marking them
    must not lower it, or a second crash would re-send past the first one's
    outputs as whole batches (the CF over-count of issue 23)."""
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    store.mark_inflight(23843)
    store.mark_inflight(16402)  # the replay's first batch
    assert store.inflight() == 23843
    store.close()
    reopened = UserPartitionStore(tmp_path / "p0", DTYPE)
    assert reopened.inflight() == 23843
    reopened.mark_inflight(23900)
    assert reopened.inflight() == 23900


def test_cf_snapshot_round_trip(tmp_path):
    table = CFTable(half_life_ms=1000.0)
    table.learn_many([1, 1, 2], [10, 11, 10], [0, 500, 1000], [1.0, 2.0, 1.0])
    coclick = CoClickTable(half_life_ms=1000.0)
    coclick.learn([(1, 0.5)], [10, 11], 12, ts=700)
    coclick.learn([], [10], 11, ts=900)
    store = CFPartitionStore(tmp_path / "cf")
    empty = CoClickTable(half_life_ms=1000.0)
    store.save(
        table, empty, next_offset=9, watermarks={(0, 1): 5, (1, 2): 7}, new_names={10: "i10"}
    )
    local = {(0, 1): [(5, 9), (10, 12)], (1, 3): [(7, 7)]}
    store.save(table, coclick, 9, {(0, 1): 5, (1, 2): 7}, new_names={11: "i11"}, local=local)
    restored, restored_co = CFTable(half_life_ms=1000.0), CoClickTable(half_life_ms=1000.0)
    offset, marks, names, pending = store.load(restored, restored_co)
    assert offset == 9 and marks == {(0, 1): 5, (1, 2): 7} and names == {10: "i10", 11: "i11"}
    assert {mark: list(spans) for mark, spans in pending.items()} == local
    for cid in (1, 2):
        np.testing.assert_allclose(restored.top(cid, 5)[1], table.top(cid, 5)[1])
        assert restored.top(cid, 5)[0].tolist() == table.top(cid, 5)[0].tolist()
    for scope, item in [(1, 12), (1, 10), (-1, 10), (-1, 11), (-1, 12)]:
        mass, top = coclick.row(scope, item)
        mass2, top2 = restored_co.row(scope, item)
        assert mass2 == pytest.approx(mass) and mass > 0
        assert [k for k, _ in top2] == [k for k, _ in top]
        assert [v for _, v in top2] == pytest.approx([v for _, v in top])
    # 10 co-clicked with 12 at 700 and with 11 at 900, seen at 900
    assert restored_co.row(-1, 10)[1] == [(11, pytest.approx(1.0)), (12, pytest.approx(2**-0.2))]


def _set_times(store, ids, t_ms):
    batch = store.read_many(ids)
    batch.rows["t_ms"] = t_ms
    store.write_many(batch)


def test_expired_users_become_tombstones_in_the_flush_and_a_rebuilt_store_agrees(tmp_path):
    """Issue 23: idle users leave RocksDB, the changelog (a tombstone, value
    None) and their cluster's member count; one who clicks again is new."""
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    _write(store, ["a", "b", "c", "d"], [1, 2, 3, 4], [7, 7, 8, -1])
    _set_times(store, ["a", "b", "c", "d"], [1_000, 50_000, 90_000, 2_000])
    first = _flush(store, next_offset=4)
    assert store.expiry_candidates(ttl_ms=60_000) == (["a", "d"], 90_000)
    store.expire(["a", "d"], np.array([7, -1]))
    assert len(store) == 2 and store.current_sizes == {7: 1, 8: 1}
    assert store.read_many(["a"]).handle[1].tolist() == [True]  # back as a new user
    second = _flush(store, next_offset=4)
    assert (b"u:a", None) in second and (b"u:d", None) in second
    assert sorted(store.user_ids()) == ["b", "c"] and store.n_users == 2
    assert store.sizes == {7: 1, 8: 1}

    # a store rebuilt from the changelog (both flushes) agrees
    rebuilt = UserPartitionStore(tmp_path / "p1", DTYPE)
    cut = CompleteFlushes()
    log = [(i, k, v) for i, (k, v) in enumerate(first + second)]
    records, position = cut.feed(log)
    rebuilt.apply_changelog(records, position)
    assert sorted(rebuilt.user_ids()) == ["b", "c"]
    assert (rebuilt.n_users, rebuilt.sizes) == (2, {7: 1, 8: 1})

    # "a" clicks again: a blank record, counted as a user again
    _write(store, ["a"], [1], [8])
    assert len(store) == 3 and store.current_sizes == {7: 1, 8: 2}
    _flush(store, next_offset=5)
    assert sorted(store.user_ids()) == ["a", "b", "c"]
    assert store.read_many(["a"]).rows["clicks"].tolist() == [1]


@pytest.mark.parametrize("directed", [False, True])
def test_a_co_click_snapshot_says_how_it_was_written(tmp_path, directed, caplog):
    coclick = CoClickTable(half_life_ms=1000.0, directed=directed)
    coclick.learn([(1, 1.0)], [10, 11], 12, ts=700)
    store = CFPartitionStore(tmp_path / "cf")
    store.save(CFTable(half_life_ms=1000.0), coclick, 3, {}, new_names={})
    same = CoClickTable(half_life_ms=1000.0, directed=directed)
    with caplog.at_level("WARNING", logger="stream.app.cfstore"):
        store.load(CFTable(half_life_ms=1000.0), same)
    assert not caplog.records
    assert same.neighbours(1, 12) == coclick.neighbours(1, 12)
    assert (same.neighbours(1, 12) == []) == directed  # nothing was clicked after 12
    other = CoClickTable(half_life_ms=1000.0, directed=not directed)
    with caplog.at_level("WARNING", logger="stream.app.cfstore"):
        store.load(CFTable(half_life_ms=1000.0), other)
    assert "coclick_directed" in caplog.text


def _learnt(store) -> dict[str, list[float]]:
    ids, values = store.learnt_rows()
    return {i: v.tolist() for i, v in zip(ids, values, strict=True)}


def test_learnt_deltas_are_flushed_as_totals_and_a_changelog_copy_agrees(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)  # dim 4: clicks and 4 sums
    one = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    store.stage_learnt([b"l:x"], one)
    store.stage_learnt([b"l:x", b"l:y"], np.array([[2.0, 0, 2, 0, 0], [1.0, 0, 0, 1, 0]]))
    _write(store, ["a"], [1], [7])
    first = _flush(store, next_offset=1)
    assert np.frombuffer(dict(first)[b"l:x"]).tolist() == [3, 1, 2, 0, 0]
    store.stage_learnt([b"l:x"], one)
    assert _learnt(store) == {"x": [4, 2, 2, 0, 0], "y": [1, 0, 0, 1, 0]}  # staged ones count
    second = _flush(store, next_offset=2)
    learnt = {k: np.frombuffer(v).tolist() for k, v in second if k.startswith(b"l:")}
    assert learnt == {b"l:x": [4, 2, 2, 0, 0]}  # only what moved, as a total
    copy = UserPartitionStore(tmp_path / "copy", DTYPE)
    copy.apply_changelog(first + second, next_offset=len(first) + len(second))
    assert _learnt(copy) == _learnt(store)
    store.close()
    assert _learnt(UserPartitionStore(tmp_path / "p0", DTYPE)) == _learnt(copy)


def test_a_reset_drops_the_unflushed_learnt_deltas_and_says_which(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE)
    one = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    store.stage_learnt([b"l:x"], one)
    _flush(store, next_offset=1)
    store.stage_learnt([b"l:x"], one)
    store.begin_flush(2)  # in flight: not in RocksDB until it ends
    store.stage_learnt([b"l:x", b"l:y"], np.concatenate([one, 2 * one]))
    ids, deltas = store.unflushed_learnt()
    assert dict(zip(ids, deltas.tolist(), strict=True)) == {
        "x": [2, 2, 0, 0, 0], "y": [2, 2, 0, 0, 0]
    }  # fmt: skip
    assert _learnt(store) == {"x": [3, 3, 0, 0, 0], "y": [2, 2, 0, 0, 0]}
    store.reset()
    assert store.unflushed_learnt()[0] == [] and _learnt(store) == {"x": [1, 1, 0, 0, 0]}
