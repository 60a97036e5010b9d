"""Memory figures of a user store and of the process (the soak's breakdown
of the worker's RSS), and the allocator's trim."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import numpy as np

from stream.app.cfstore import CF_WRITE_BUFFER_BYTES, CFPartitionStore
from stream.app.memory import Trimmer, rss_mb, rss_parts, threads
from stream.app.stores import UserPartitionStore
from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable
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


# glibc's malloc: the allocator of the workers' images (Debian); its figures
# and the trim are None elsewhere, which these tests would report as a failure
libc = ctypes.CDLL(None)
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None


def _kept_free_memory(blocks: int = 200_000, size: int = 512) -> int:
    """Allocate ``blocks`` small malloc blocks (~100 MB, touched), then free
    all but the last: the freed ones lie below a block in use, so free()
    cannot give them back at the heap's top; returns that last block."""
    ptrs = [libc.malloc(size) for _ in range(blocks)]
    for p in ptrs:
        ctypes.memset(p, 1, size)
    for p in ptrs[:-1]:
        libc.free(p)
    return ptrs[-1]


ALLOCATOR = """
import ctypes, json
from stream.app.memory import allocator_stats
libc = ctypes.CDLL(None)
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
before = allocator_stats()
ptrs = [libc.malloc(1024) for _ in range(50_000)]  # ~50 MB in use
during = allocator_stats()
for p in ptrs[:-1]:  # the last one keeps the freed memory below the heap's top
    libc.free(p)
print(json.dumps([before, during, allocator_stats()]))
"""


def test_allocator_figures_follow_mallocs_and_frees():
    # a fresh process: in pytest's, other tests' memory shares the heap
    out = subprocess.run([sys.executable, "-c", ALLOCATOR], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    before, during, after = json.loads(out)
    assert set(before) == {"malloc_heap_mb", "malloc_in_use_mb", "malloc_free_mb", "malloc_mmap_mb"}
    assert during["malloc_in_use_mb"] >= before["malloc_in_use_mb"] + 45
    assert after["malloc_free_mb"] >= before["malloc_free_mb"] + 45  # freed, kept
    assert after["malloc_in_use_mb"] <= during["malloc_in_use_mb"] - 45


def test_trim_gives_kept_memory_back_and_counts_it():
    last = _kept_free_memory()
    kept = rss_mb()
    trimmer = Trimmer()
    trimmer.trim()
    assert rss_mb() <= kept - 50
    assert trimmer.trims == 1
    assert trimmer.released_mb >= 50
    figures = trimmer.as_dict()
    assert figures["malloc_trims"] == 1 and figures["malloc_trim_released_mb"] >= 50
    assert figures["malloc_trim_ms_max"] >= figures["malloc_trim_ms_last"] >= 0
    libc.free(last)


def test_rss_parts_add_up_to_the_rss():
    parts = rss_parts()
    rss = rss_mb()
    kinds = parts["files"] + parts["malloc_main"] + parts["malloc_threads"] + parts["other_anon"]
    assert abs(kinds - rss) < 0.05 * rss  # two reads of a live process
    assert parts["files"] > 5  # the interpreter and its libraries
    assert parts["malloc_main"] > 0
    assert rss_parts(-1) is None
    assert threads() >= 1 and threads(-1) is None


def test_cf_snapshot_store_memtables_stay_small(tmp_path):
    """Each snapshot overwrites the last; the store's memtables must not keep
    minutes of dead ones (RocksDB's 64 MB default kept ~40 of these)."""
    table = CFTable(half_life_ms=1000.0, max_items=100_000, capacity=1 << 17)
    n = 60_000
    rng = np.random.default_rng(0)
    table.learn_many(rng.integers(0, 32, n), np.arange(n), np.arange(n), np.ones(n))
    store = CFPartitionStore(tmp_path / "cf")
    for offset in range(40):  # ~1.4 MB each, ~58 MB written
        store.save(table, CoClickTable(1000.0), next_offset=offset, watermarks={}, new_names={})
    figures = store.memory()
    assert 0 < figures["memtable_bytes"] <= 2 * CF_WRITE_BUFFER_BYTES + 2 * 2**20
    assert figures["table_readers_bytes"] > 0  # flushed to tables meanwhile
    assert store.load(CFTable(half_life_ms=1000.0), CoClickTable(1000.0))[0] == 39
    store.close()


ARENAS = """
import ctypes, json, sys, threading
from stream.app.memory import limit_arenas, rss_parts
print(limit_arenas(int(sys.argv[1])))
libc = ctypes.CDLL(None)
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
def work():
    for _ in range(20):
        for p in [libc.malloc(1000) for _ in range(1000)]:
            libc.free(p)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(rss_parts()))
"""


def _in_fresh_interpreter(script: str, arg: int) -> tuple[str, dict]:
    """``script``'s two lines of output: what the setting call returned, and a JSON object."""
    out = subprocess.run(
        [sys.executable, "-c", script, str(arg)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return out[0], json.loads(out[1])


def _thread_heaps(limit: int) -> tuple[str, int]:
    said, parts = _in_fresh_interpreter(ARENAS, limit)
    return said, parts["malloc_thread_heaps"]


def test_limit_arenas_caps_the_threads_arenas():
    # glibc gives each new thread that allocates an arena of its own (8 a core at most);
    # heaps are counted by mapping, and one arena's heap may show as two
    default, capped = _thread_heaps(0), _thread_heaps(2)
    assert default[0] == "None" and default[1] >= 3
    assert capped[0] == "True" and capped[1] <= 2 < default[1]  # the main arena and one more


MMAP = """
import json, sys
import numpy as np
from stream.app.memory import allocator_stats, set_mmap_threshold
print(set_mmap_threshold(int(sys.argv[1])))
a = np.ones(4 << 20, dtype=np.uint8)  # mapped on its own (over 128 KiB)
del a  # glibc's sliding threshold now rises past 4 MiB
b = np.ones(4 << 20, dtype=np.uint8)
print(json.dumps(allocator_stats()))
"""


def _mapped_mb(kb: int) -> tuple[str, float]:
    said, stats = _in_fresh_interpreter(MMAP, kb)
    return said, stats["malloc_mmap_mb"]


def test_fixed_mmap_threshold_keeps_large_blocks_mapped():
    # the second 4 MiB array: from the heap under glibc's sliding threshold
    # (kept there when freed), a mapping of its own under a fixed one
    default, fixed = _mapped_mb(0), _mapped_mb(1024)
    assert default[0] == "None" and default[1] < 4
    assert fixed[0] == "True" and fixed[1] >= 4
