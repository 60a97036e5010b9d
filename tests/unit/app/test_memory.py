"""Memory figures of a user store (the soak's breakdown of the worker's RSS)."""

from __future__ import annotations

from stream.app.memory import rss_mb
from stream.app.stores import UserPartitionStore
from stream.core.state import user_dtype

DTYPE = user_dtype(dim=4, top_m=2, recent=3)


def test_store_memory_counts_the_cache_and_the_memtable(tmp_path):
    store = UserPartitionStore(tmp_path / "p0", DTYPE, cache_rows=2048)
    empty = store.memory()
    assert empty["cache_rows"] == 0
    ids = [f"u{i}" for i in range(1500)]
    store.write_many(store.read_many(ids))
    store.begin_flush(1500)
    store.write_flush(None)
    store.end_flush()
    figures = store.memory()
    assert figures["cache_rows"] == 1500
    # the cache array holds at least those rows; the memtable their bytes
    assert figures["cache_bytes"] >= 1500 * DTYPE.itemsize
    assert figures["memtable_bytes"] > empty["memtable_bytes"] + 1500 * DTYPE.itemsize
    store.close()


def test_rss_of_this_process():
    assert rss_mb() > 10
    assert rss_mb(-1) is None
