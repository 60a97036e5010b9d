"""Per-user state: one fixed-size record per user, and the store interface.

A user record is a numpy structured row (so a batch of users is one array, and
its bytes are the on-disk format of the RocksDB store):

- ``mean``: (dim,) float32, time-decayed weighted mean of clicked item vectors
- ``weight``: float64, decayed total click weight at ``t_ms``
- ``t_ms``: int64, time of the newest applied click (epoch ms)
- ``clicks``: int64, clicks applied
- ``cluster_ids``: (top_m,) int64, memberships, primary first, -1 = none
- ``scores``: (top_m,) float32, cosine of the user vector to each membership
- ``recent``: (recent,) int64, stable keys of the newest clicked items, newest first, -1 = none
- ``events``: (events,) int64, hashes of the newest event ids, newest first, 0 =
  none (:mod:`stream.core.dedupe`); only with ``events`` > 0

Stores implement :class:`UserStore`: ``read_many`` returns a :class:`UserBatch`
(rows for unknown users are blank), ``write_many`` writes it back.

>>> store = InMemoryUserStore(user_dtype(dim=4, top_m=2, recent=3))
>>> batch = store.read_many(["u1", "u2"])
>>> batch.rows["cluster_ids"].tolist()
[[-1, -1], [-1, -1]]
>>> batch.rows["clicks"] += 1
>>> store.write_many(batch)
>>> len(store), store.read_many(["u2"]).rows["clicks"].tolist()
(2, [1])
"""

from __future__ import annotations

import mmap
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stream.core.hashmap import Int64Map
from stream.core.items import unit_rows
from stream.system.prefault import Prefaulter

_PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def user_dtype(dim: int, top_m: int, recent: int, events: int = 0) -> np.dtype:
    """The structured dtype of one user record (little-endian, packed)."""
    fields = [
        ("mean", "<f4", (dim,)),
        ("weight", "<f8"),
        ("t_ms", "<i8"),
        ("clicks", "<i8"),
        ("cluster_ids", "<i8", (top_m,)),
        ("scores", "<f4", (top_m,)),
        ("recent", "<i8", (recent,)),
    ]
    if events:
        fields.append(("events", "<i8", (events,)))
    return np.dtype(fields)


def blank_rows(dtype: np.dtype, n: int) -> np.ndarray:
    """(n,) records of users never seen: zero vector and weight, no memberships."""
    rows = np.zeros(n, dtype=dtype)
    rows["cluster_ids"] = -1
    rows["recent"] = -1
    return rows


@dataclass
class UserBatch:
    """Users read together: ``ids`` (list[str]), ``rows`` records, and a
    store-specific ``handle`` that lets ``write_many`` skip a second lookup.

    ``at`` None: ``rows`` (n,) holds copies, user ``ids[i]`` in ``rows[i]``. Else
    ``rows`` is the store's own array and ``ids[i]`` is ``rows[at[i]]`` (n,) int64
    (:meth:`InMemoryUserStore.read_in_place`).
    """

    ids: list[str]
    rows: np.ndarray
    handle: Any = None
    at: np.ndarray | None = None

    def positions(self) -> np.ndarray:
        """(n,) int64: where each user's record is in ``rows``."""
        return np.arange(len(self.ids)) if self.at is None else self.at


class UserStore(Protocol):
    """Where user records live (memory here; RocksDB in the worker). A store may
    also lend its own records (:meth:`InMemoryUserStore.read_in_place`):
    ``process_batch`` then changes them where they are."""

    dtype: np.dtype

    def read_many(self, user_ids: Sequence[str], hashes: np.ndarray | None = None) -> UserBatch:
        """Records of unique ``user_ids`` (blank for unknown users); ``hashes`` are
        their :func:`str_hashes` when the caller has them already."""
        ...

    def write_many(self, batch: UserBatch) -> None: ...

    def __len__(self) -> int: ...

    def iter_chunks(self, size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]: ...


def str_hashes(ids: Sequence[str]) -> np.ndarray:
    """(n,) int64 Python hashes of ids: fast, but salted per process, so only
    for in-memory indexes (a 64-bit collision between two users is
    negligible: about n**2 / 2**65)."""
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


def as_records(rows: np.ndarray) -> np.ndarray:
    """``rows`` viewed as opaque fixed-size records: numpy gathers and scatters
    those with one memcpy each instead of field by field."""
    return rows.view(np.dtype((np.void, rows.dtype.itemsize)))


class _Arena:
    """A growable (n,) array of ``dtype`` records in an anonymous private memory
    map. Growing remaps the pages (no copy), and a page takes memory only once
    written: on our VMs a first write to a page is slow, so copying on every
    doubling showed in ``clusterstream bench core``. The pages just
    past the records in use are faulted in ahead by a helper thread
    (:mod:`stream.system.prefault`), so appending does not pay that either."""

    def __init__(self, dtype: np.dtype, capacity: int):
        self._dtype = dtype
        self._map = mmap.mmap(-1, max(capacity, 1) * dtype.itemsize, flags=_PRIVATE)
        _huge_pages(self._map)
        self.rows = np.frombuffer(self._map, dtype=dtype)
        self._ahead = Prefaulter()

    def used(self, n: int) -> None:
        """The first ``n`` records are in use: fault in the pages after them."""
        self._ahead.advance(
            self.rows.ctypes.data, self.rows.nbytes, n * self._dtype.itemsize, keep=self._map
        )

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` records (``rows`` is then a new array; a
        view of the old one still alive keeps the old records, no longer used)."""
        old = len(self.rows)
        self._ahead.wait()  # the map may move
        self.rows = None  # a map with exported buffers cannot be resized
        try:
            self._map.resize(capacity * self._dtype.itemsize)
        except (OSError, SystemError, ValueError, BufferError):  # no mremap (macOS), or views
            size = self._dtype.itemsize
            self._map = _copied(self._map, old * size, capacity * size)
        _huge_pages(self._map)
        self.rows = np.frombuffer(self._map, dtype=self._dtype)


def _huge_pages(region: mmap.mmap) -> None:
    """Ask for transparent huge pages where the system offers them (Linux)."""
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass


def _copied(old: mmap.mmap, used: int, size: int) -> mmap.mmap:
    """A new private map of ``size`` bytes holding ``old``'s first ``used``; closes
    ``old`` unless views of it are alive (it goes with the last of them)."""
    new = mmap.mmap(-1, size, flags=_PRIVATE)
    new[:used] = old[:used]
    try:
        old.close()
    except BufferError:
        pass
    return new


class InMemoryUserStore:
    """All records in one growing structured array, indexed by a vectorised hash map."""

    def __init__(self, dtype: np.dtype, capacity: int = 1024):
        self.dtype = dtype
        self._index = Int64Map(capacity)
        self._ids: list[str] = []
        self._arena = _Arena(dtype, capacity)
        self._blank = as_records(blank_rows(dtype, 1))[0]

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def _rows(self) -> np.ndarray:
        return self._arena.rows  # fetched anew: growing may move the records

    def read_many(self, user_ids: Sequence[str], hashes: np.ndarray | None = None) -> UserBatch:
        """Rows for ``user_ids`` (unique ids; unknown ones get blank rows, not yet stored)."""
        if hashes is None:
            hashes = str_hashes(user_ids)
        idx = self._index.get(hashes)
        records = as_records(self._rows)[np.maximum(idx, 0)]
        records[idx < 0] = self._blank
        rows = records.view(self.dtype)
        return UserBatch(list(user_ids), rows, (hashes, idx))

    def read_in_place(self, user_ids: Sequence[str], hashes: np.ndarray | None = None) -> UserBatch:
        """The records of unique ``user_ids`` where they are stored, not copied:
        ``rows`` is the store's array, ``at`` the users' positions in it, and a
        change to those records is stored as it is made. Users not seen before
        are stored at once, with blank records. ``write_many`` of the batch then
        has nothing left to do. The batch is good until the next read or write
        of the store: growing moves the records to a new array. Unlike
        ``read_many``, a batch whose processing fails halfway leaves its changes
        so far (and its new users) stored.

        Saves the copy of every record both ways (core benchmark, ~1000 users a
        batch of 1M: a gather and a scatter of ~0.4 MB at random places).
        """
        if hashes is None:
            hashes = str_hashes(user_ids)
        before = len(self._ids)
        at = self._index.get_or_insert(hashes)
        if len(self._index) > before:  # new users: the next positions, in order
            self._add(user_ids, np.flatnonzero(at >= before))
            as_records(self._rows)[before : len(self._ids)] = self._blank
            self._arena.used(len(self._ids))
        return UserBatch(list(user_ids), self._rows, at=at)

    def write_many(self, batch: UserBatch) -> None:
        if batch.at is not None:
            return  # read in place: stored already
        if batch.handle is None:
            hashes = str_hashes(batch.ids)
            idx = self._index.get(hashes)
        else:
            hashes, idx = batch.handle
        new = np.flatnonzero(idx < 0)
        if len(new):
            idx = idx.copy()
            idx[new] = self._index.get_or_insert(hashes[new])
            self._add(batch.ids, new)
        as_records(self._rows)[idx] = as_records(batch.rows)
        if len(new):
            self._arena.used(len(self._ids))

    def _add(self, ids: Sequence[str], new: np.ndarray) -> None:
        """Append ``ids[new]`` (users just given the next positions, in order) and
        make room for their records."""
        got = operator.itemgetter(*new.tolist())(ids)
        self._ids.extend(got if len(new) > 1 else [got])
        self._grow(len(self._ids))

    def _grow(self, need: int) -> None:
        # rows past len(self) are never read, so they need no blank values
        if need <= len(self._rows):
            return
        self._arena.grow(max(need, 2 * len(self._rows)))

    def iter_chunks(self, size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        """All stored users in insertion order, ``size`` at a time (rows are copies)."""
        for start in range(0, len(self._ids), size):
            stop = min(start + size, len(self._ids))
            yield self._ids[start:stop], self._rows[start:stop].copy()

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Ids and (n, dim) float32 unit vectors of users that have a vector."""
        n = len(self._ids)
        has = self._rows["weight"][:n] > 0
        ids = [u for u, h in zip(self._ids, has.tolist(), strict=True) if h]
        return ids, unit_rows(self._rows["mean"][:n][has])
