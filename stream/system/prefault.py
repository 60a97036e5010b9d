"""Fault memory in ahead of use, on a helper thread (an operating-system trick
the core's user arena uses; not numerics, so it lives outside the core).

On our VMs the first write to a fresh page is slow (the page is zeroed, and
the first time the process has it, the hypervisor backs it), paid by
whichever thread touches the page first. A store that appends
records at the end of one memory map knows which pages come next, so a
:class:`Prefaulter` has the helper thread fault them in with
``madvise(MADV_POPULATE_WRITE)`` (Linux >= 5.14): it maps each page writable
without changing what it holds, so it is safe while other threads write to
the same pages, and it releases the GIL (a ``ctypes`` call). The thread that
appends then writes to pages that are already there (``clusterstream bench
core`` shows the effect on ``process_batch``).

Where the call is missing (other systems, older kernels) it does nothing.

>>> import mmap, numpy as np
>>> region = mmap.mmap(-1, 1 << 20)
>>> base = np.frombuffer(region, dtype=np.uint8)
>>> ahead = Prefaulter(ahead=1 << 16, chunk=1 << 16)
>>> ahead.advance(base.ctypes.data, len(base), used=0)
>>> ahead.wait()
>>> ahead.populated in (0, 1 << 16)   # 0 where the call is missing
True
"""

from __future__ import annotations

import collections
import ctypes
import logging
import sys
import threading

logger = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23  # linux/mman.h
PAGE = 4096


def _madvise():
    """libc's ``madvise`` through ctypes (which drops the GIL during the call), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()
_supported = _MADVISE is not None


def populate(address: int, length: int) -> bool:
    """Fault in the pages of ``[address, address + length)`` (page-aligned
    ``address``) for writing, contents unchanged; False where that is not
    supported (then it never tries again)."""
    global _supported
    if not _supported or length <= 0:
        return False
    if _MADVISE(address, length, MADV_POPULATE_WRITE) != 0:
        err = ctypes.get_errno()
        if err == 22:  # EINVAL: a kernel without MADV_POPULATE_WRITE
            _supported = False
            logger.info("madvise(MADV_POPULATE_WRITE) is not supported here: no prefaulting")
        return False
    return True


class _Helper:
    """The one helper thread of the process: it runs the prefaulters' calls one
    after another. It is started on first use and then waits for work, so
    handing it a call costs a notify, not a thread start on the appending
    thread."""

    def __init__(self):
        self._cond = threading.Condition()
        self._jobs: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None

    def submit(self, owner: Prefaulter, address: int, length: int, keep: object) -> None:
        with self._cond:
            owner._busy = True
            self._jobs.append((owner, address, length, keep))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="prefault", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, owner: Prefaulter) -> None:
        with self._cond:
            while owner._busy:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                owner, address, length, _ = self._jobs[0]
            try:
                populate(address, length)
            finally:
                with self._cond:
                    self._jobs.popleft()
                    owner._busy = False
                    self._cond.notify_all()


_HELPER = _Helper()


class Prefaulter:
    """Keeps the next ``ahead`` bytes past the used end of one growing region
    faulted in, ``chunk`` bytes per call on the helper thread, one call at a time.

    Offsets count from the region's start, so they stay right when the region
    is remapped to another address (call :meth:`wait` before remapping or
    unmapping it: the helper must not work on a stale address).
    """

    def __init__(self, ahead: int = 32 << 20, chunk: int = 16 << 20):
        self.ahead = ahead
        self.chunk = chunk
        self.populated = 0  # bytes from the region's start faulted in (or being)
        self._busy = False  # a call of ours is queued or running

    def advance(self, address: int, size: int, used: int, keep: object = None) -> None:
        """The region is ``size`` bytes at ``address`` (page-aligned), its first
        ``used`` bytes in use: hand the helper the next chunk if it has no call
        of ours and less than ``ahead`` bytes past ``used`` are done. ``keep``
        (the region's owner, e.g. its ``mmap``) is held until the call is done,
        so the region cannot be unmapped, and its addresses given to another
        map, while the call waits or runs."""
        if not _supported:
            return
        want = min(used + self.ahead, size)
        if want <= self.populated or self._busy:
            return
        start = self.populated // PAGE * PAGE
        stop = min(max(want, start + self.chunk), size) // PAGE * PAGE
        if stop <= start:
            return
        self.populated = stop
        _HELPER.submit(self, address + start, stop - start, keep)

    def wait(self) -> None:
        """Until the helper's call for this region is done."""
        if self._busy:
            _HELPER.wait(self)
