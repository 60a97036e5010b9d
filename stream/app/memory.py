"""Where a worker's memory goes, for ``/stats`` ``memory`` (the soak reads it).

The resident size of the process (``/proc/self/status``) next to what the
worker can count itself: the user row caches, RocksDB's memtables, table
readers (index and filter blocks) and shared block cache, and the blocks
Python's allocator holds. What the counted parts do not explain is the
allocator's own (freed memory not given back, other libraries' buffers).
"""

from __future__ import annotations

import sys

from stream.app.rocks import block_cache_bytes

MB = 2**20


def rss_mb(pid: int | str = "self") -> float | None:
    """VmRSS of process ``pid`` in MB (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def memory_stats(hotpath) -> dict:
    """Memory figures (MB, rows) of a worker's hot path: its owned stores summed."""
    totals = {"cache_rows": 0, "cache_bytes": 0, "memtable_bytes": 0, "table_readers_bytes": 0}
    for owned in list(hotpath.owned.values()):
        try:
            figures = owned.store.memory()
        except Exception:  # a store closing under a rebalance: counted at the next call
            continue
        for key, value in figures.items():
            totals[key] += value
    return {
        "rss_mb": rss_mb(),
        "user_cache_rows": totals["cache_rows"],
        "user_cache_mb": round(totals["cache_bytes"] / MB, 1),
        "rocksdb_memtables_mb": round(totals["memtable_bytes"] / MB, 1),
        "rocksdb_table_readers_mb": round(totals["table_readers_bytes"] / MB, 1),
        "rocksdb_block_cache_mb": round(block_cache_bytes() / MB, 1),
        "python_blocks": sys.getallocatedblocks(),
    }
