"""Faulting pages in ahead on a helper thread (stream.system.prefault)."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

from stream.core.state import InMemoryUserStore, user_dtype
from stream.system import prefault
from stream.system.prefault import PAGE, Prefaulter, populate

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise/mincore")


def resident_pages(array: np.ndarray) -> int:
    """Pages under ``array`` (page-aligned) that are in memory, by ``mincore``."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    n = -(-array.nbytes // PAGE)
    vec = (ctypes.c_ubyte * n)()
    assert libc.mincore(array.ctypes.data, array.nbytes, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec)


def fresh_region(pages: int) -> tuple[mmap.mmap, np.ndarray]:
    region = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return region, np.frombuffer(region, dtype=np.uint8)


@linux_only
def test_populate_faults_pages_in_without_changing_them():
    region, arr = fresh_region(64)
    arr[:10] = np.arange(1, 11)  # the first page is in, with data
    assert resident_pages(arr) == 1
    if not populate(arr.ctypes.data, 32 * PAGE):
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    assert resident_pages(arr) == 32
    assert arr[:10].tolist() == list(range(1, 11)) and not arr[10:].any()
    del arr
    region.close()


@linux_only
def test_prefaulter_keeps_ahead_of_the_used_end_one_chunk_at_a_time():
    region, arr = fresh_region(256)
    ahead = Prefaulter(ahead=64 * PAGE, chunk=16 * PAGE)
    ahead.advance(arr.ctypes.data, arr.nbytes, used=0)
    ahead.wait()
    if not prefault._supported:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    assert ahead.populated == 64 * PAGE == resident_pages(arr) * PAGE  # 'ahead' beats 'chunk'
    ahead.advance(arr.ctypes.data, arr.nbytes, used=8 * PAGE)  # 72 wanted, 64 done: one chunk
    ahead.wait()
    assert ahead.populated == 80 * PAGE == resident_pages(arr) * PAGE
    ahead.advance(arr.ctypes.data, arr.nbytes, used=250 * PAGE)  # never past the region
    ahead.wait()
    assert ahead.populated == 256 * PAGE == resident_pages(arr) * PAGE
    del arr
    region.close()


@linux_only
def test_writes_racing_the_helper_are_kept():
    region, arr = fresh_region(4096)  # 16 MB
    words = arr.view(np.int64)
    ahead = Prefaulter(ahead=arr.nbytes, chunk=arr.nbytes)
    ahead.advance(arr.ctypes.data, arr.nbytes, used=0)
    expected = np.arange(1, len(words) + 1, dtype=np.int64)
    # while the helper works through the region, write every word of it
    for start in range(0, len(words), 8192):
        words[start : start + 8192] = expected[start : start + 8192]
    ahead.wait()
    assert np.array_equal(words, expected)
    del arr, words
    region.close()


def test_unsupported_is_a_no_op(monkeypatch):
    monkeypatch.setattr(prefault, "_supported", False)
    region, arr = fresh_region(16)
    ahead = Prefaulter(ahead=8 * PAGE, chunk=8 * PAGE)
    ahead.advance(arr.ctypes.data, arr.nbytes, used=0)
    ahead.wait()
    assert ahead.populated == 0 and not ahead._busy
    assert not populate(arr.ctypes.data, PAGE)
    del arr
    region.close()


def test_a_growing_store_reads_back_every_row_with_the_helper_on():
    dt = user_dtype(dim=8, top_m=2, recent=4)
    store = InMemoryUserStore(dt, capacity=4)
    store._arena._ahead = Prefaulter(ahead=1 << 16, chunk=1 << 14)  # small: many calls
    for b in range(40):
        ids = [f"u{b}-{i}" for i in range(200)]
        batch = store.read_many(ids)
        batch.rows["clicks"] = np.arange(200) + 1000 * b
        batch.rows["mean"] = b
        store.write_many(batch)
    assert len(store) == 8000
    for b in (0, 17, 39):
        rows = store.read_many([f"u{b}-{i}" for i in range(200)]).rows
        assert rows["clicks"].tolist() == (np.arange(200) + 1000 * b).tolist()
        assert (rows["mean"] == b).all()


@linux_only
def test_two_regions_share_the_helper_and_each_waits_for_its_own_call():
    regions = [fresh_region(512) for _ in range(2)]
    aheads = [Prefaulter(ahead=256 * PAGE, chunk=256 * PAGE) for _ in regions]
    for ahead, (_, arr) in zip(aheads, regions, strict=True):
        ahead.advance(arr.ctypes.data, arr.nbytes, used=0)
    if not prefault._supported:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    for ahead, (_, arr) in zip(aheads, regions, strict=True):
        ahead.wait()
        assert not ahead._busy and resident_pages(arr) == 256
    assert prefault._HELPER._thread is not None and not prefault._HELPER._jobs
    maps = [region for region, _ in regions]
    del regions, arr
    for region in maps:
        region.close()
