"""Where a worker's memory goes, for ``/stats`` ``memory`` (the soak reads it).

The resident size of the process (``/proc/self/status``) next to what the
worker can count itself: the user row caches, RocksDB's memtables, table
readers (index and filter blocks) and shared block cache, and the blocks
Python's allocator holds. What the counted parts do not explain is the
allocator's own (freed memory not given back, other libraries' buffers):
glibc's figures (``mallinfo2``) show how much of it is in use and how much
is free but kept. :class:`Trimmer` hands the kept part back to the system
(``malloc_trim``) every ``malloc_trim_s`` seconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from stream.app.rocks import block_cache_bytes

logger = logging.getLogger(__name__)

MB = 2**20

_MALLINFO2_FIELDS = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
    "fordblks", "keepcost",
)  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


class _Libc(NamedTuple):
    malloc_trim: Callable
    mallinfo2: Callable
    mallopt: Callable


def _libc() -> _Libc | None:
    """The C library's malloc_trim, mallinfo2 (glibc 2.33+) and mallopt, or None."""
    try:
        libc = ctypes.CDLL(None)
        trim, info, opt = libc.malloc_trim, libc.mallinfo2, libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS) or an older one
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    info.argtypes, info.restype = [], _MallInfo2
    opt.argtypes, opt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return _Libc(trim, info, opt)


_LIBC = _libc()


def allocator_stats() -> dict | None:
    """glibc malloc's figures in MB, over all its arenas (None without glibc):
    ``malloc_heap_mb`` taken from the system by brk/mmap'd heaps,
    ``malloc_in_use_mb`` handed out of them, ``malloc_free_mb`` free in them
    (kept, resident unless trimmed), ``malloc_mmap_mb`` large blocks mapped
    one by one (given back when freed)."""
    if _LIBC is None:
        return None
    m = _LIBC.mallinfo2()
    return {
        "malloc_heap_mb": round(m.arena / MB, 1),
        "malloc_in_use_mb": round(m.uordblks / MB, 1),
        "malloc_free_mb": round(m.fordblks / MB, 1),
        "malloc_mmap_mb": round(m.hblkhd / MB, 1),
    }


_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(n: int) -> bool | None:
    """At most ``n`` malloc arenas from now on (0: leave glibc's default, 8 a
    core); threads that already have one keep it, so call it before the
    worker's threads start. True if set, None without glibc."""
    if _LIBC is None or n <= 0:
        return None
    return bool(_LIBC.mallopt(_M_ARENA_MAX, n))


_M_MMAP_THRESHOLD = -3


def set_mmap_threshold(kb: int) -> bool | None:
    """Blocks of ``kb`` KiB or more get a mapping of their own, given back to
    the system when freed (0: leave glibc's default, which starts at 128 KiB
    and rises to the largest mapped block freed, up to 32 MiB; after the
    first batches every batch's arrays then come from the arenas, whose
    freed memory stays resident). True if set, None without glibc."""
    if _LIBC is None or kb <= 0:
        return None
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, kb * 1024))


def malloc_trim() -> bool | None:
    """Give the free pages of every malloc arena back to the system; True if
    any was, None without glibc."""
    if _LIBC is None:
        return None
    return bool(_LIBC.malloc_trim(0))


class Trimmer:
    """Counts of the periodic ``malloc_trim`` (``/stats`` ``memory``).

    glibc keeps the memory freed in an arena (one per thread that allocated,
    up to 8 per core) for its next allocations; RocksDB's memtables, the
    expiry's listings and the flushes free and re-allocate in different
    threads' arenas, so the kept part grows. A trim releases the free pages.
    """

    def __init__(self):
        self.trims = 0
        self.released_mb = 0.0  # RSS given back, summed over trims
        self.last_ms: float | None = None
        self.max_ms = 0.0

    def trim(self) -> None:
        """One trim, counted (blocking: call off the event loop)."""
        before = rss_mb() or 0.0
        began = time.perf_counter()
        if malloc_trim() is None:
            return
        ms = (time.perf_counter() - began) * 1000
        self.trims += 1
        self.released_mb += max(before - (rss_mb() or before), 0.0)
        self.last_ms, self.max_ms = round(ms, 1), round(max(self.max_ms, ms), 1)

    def as_dict(self) -> dict:
        return {
            "malloc_trims": self.trims,
            "malloc_trim_released_mb": round(self.released_mb, 1),
            "malloc_trim_ms_last": self.last_ms,
            "malloc_trim_ms_max": self.max_ms,
        }


async def trim_loop(hotpath) -> None:
    """Every ``malloc_trim_s`` (0: never), :meth:`Trimmer.trim` on
    ``hotpath``'s executor, until it stops."""
    every = hotpath.runtime.settings.malloc_trim_s
    if every <= 0 or _LIBC is None:
        return
    while not hotpath.should_stop:
        await hotpath.sleep(every)
        try:
            await hotpath.off_loop(hotpath.trimmer.trim)
        except asyncio.CancelledError:
            raise
        except Exception:  # an executor shut down at stop
            logger.exception("malloc_trim failed")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The numeric fields of ``/proc/pid/status`` (sizes in kB), e.g. ``VmRSS``,
    ``VmHWM``, ``Threads``; empty if unreadable."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                first = rest.split(maxsplit=1)
                if first and first[0].isdigit():
                    out[name] = int(first[0])
    except OSError:
        pass
    return out


def threads(pid: int | str = "self") -> int | None:
    """Threads of process ``pid`` (glibc gives each allocating one an arena)."""
    return proc_status(pid).get("Threads")


def rss_mb(pid: int | str = "self") -> float | None:
    """VmRSS of process ``pid`` in MB (None if unreadable)."""
    kb = proc_status(pid).get("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


_HEAP_ALIGN = 64 * MB  # glibc maps each thread arena's heap at a multiple of this


def rss_parts(pid: int | str = "self") -> dict | None:
    """Resident MB of process ``pid`` by kind of mapping (``/proc/pid/smaps``):
    ``files`` (code, libraries, mapped files), ``malloc_main`` (glibc's main
    arena, ``[heap]``), ``malloc_threads`` (the heaps of its thread arenas,
    ``malloc_thread_heaps`` of them), ``other_anon`` (everything else
    anonymous: Python's own arenas, malloc's large mmap'd blocks, stacks).
    None if unreadable."""
    parts = {"files": 0, "malloc_main": 0, "malloc_threads": 0, "other_anon": 0}
    heaps = 0
    kind = "other_anon"
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
            for line in f:
                first = line.split(maxsplit=6)
                if not first[0].endswith(":"):  # a mapping's header line
                    start = int(first[0].split("-")[0], 16)
                    name = first[5].strip() if len(first) > 5 else ""
                    if name == "[heap]":
                        kind = "malloc_main"
                    elif name.startswith("/"):
                        kind = "files"
                    elif not name and start % _HEAP_ALIGN == 0 and first[1].startswith("rw"):
                        kind = "malloc_threads"
                        heaps += 1
                    else:
                        kind = "other_anon"
                elif first[0] == "Rss:":
                    parts[kind] += int(first[1])
    except (OSError, ValueError, IndexError):
        return None
    out = {k: round(v / 1024, 1) for k, v in parts.items()}
    out["malloc_thread_heaps"] = heaps
    return out


def _array_bytes(obj, depth: int = 1) -> int:
    """Bytes of the numpy arrays among ``obj``'s attributes, and theirs
    ``depth`` levels down (a table's hash maps)."""
    total = 0
    for value in vars(obj).values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif depth > 0 and hasattr(value, "__dict__"):
            total += _array_bytes(value, depth - 1)
    return total


def cf_memory(cf) -> dict:
    """MB of the CF tables ``cf`` (a :class:`stream.app.cfowner.CFOwner`) owns:
    their arrays, and the memtables and table readers of their snapshot stores."""
    arrays = memtables = readers = 0
    for part in list(cf.owned.values()):
        arrays += _array_bytes(part.table)
        try:
            figures = part.store.memory()
        except Exception:  # a store closing under a rebalance: counted at the next call
            continue
        memtables += figures["memtable_bytes"]
        readers += figures["table_readers_bytes"]
    return {
        "cf_tables_mb": round(arrays / MB, 1),
        "cf_memtables_mb": round(memtables / MB, 1),
        "cf_table_readers_mb": round(readers / MB, 1),
    }


def memory_stats(hotpath, cf=None) -> dict:
    """Memory figures (MB, rows) of a worker's hot path (its owned stores
    summed) and of its CF owner ``cf`` when given."""
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
        **(cf_memory(cf) if cf is not None else {}),
        "python_blocks": sys.getallocatedblocks(),
        "threads": threads(),
        **(allocator_stats() or {}),
        **hotpath.trimmer.as_dict(),
    }
