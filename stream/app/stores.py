"""RocksDB state of a worker: one store per owned partition.

:class:`UserPartitionStore` holds the users of one clicks partition: a key
``u:<user_id>`` per user whose value is the raw bytes of its record
(:func:`stream.core.state.user_dtype`, float32 vectors, never JSON), and meta
keys ``m:*``: the next click offset to apply, the next offset of the users
changelog, the number of users and the member count of each primary cluster
(by the id stored with the users, retired ids included; readers resolve
aliases); and a key ``l:<item_id>`` per item the partition's clicks taught
the item learner, its clicks and sum (float64 raw bytes, staged as deltas
and written as totals: :mod:`stream.app.learnt`). Rows live in a bounded
write-back cache and are flushed with the offsets in one ``WriteBatch``, so
the store always holds the state after some click offset exactly, never
half a batch. Flushes skip RocksDB's write-ahead log: the users changelog,
written first, is the log. A crash may then take the store back to an
earlier flush (never into the middle of one), and opening the partition
reads the rest back from the changelog; the in-flight marker does go
through the log, so it is never older than the flushes the store lost.

Why this order of writes keeps every click exactly once is argued in
:mod:`stream.app.partition`. The CF tables' snapshots are in
:mod:`stream.app.cfstore`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from rocksdict import WriteBatch

from stream.app.rocks import (
    NO_WAL,
    db_memory,
    db_property,
    int_bytes,
    open_db,
    read_int,
)
from stream.core.hashmap import Int64Map
from stream.core.state import UserBatch, as_records, blank_rows, str_hashes
from stream.errors import ConfigError
from stream.wire.changelog import LEARNT_PREFIX, USER_PREFIX, learnt_id_of, user_key

logger = logging.getLogger(__name__)

META_NEXT_OFFSET = b"m:next_offset"
META_CHANGELOG_NEXT = b"m:changelog_next"
META_USERS = b"m:users"
META_DTYPE = b"m:dtype"
META_INFLIGHT = b"m:inflight"
META_SIZES = b"m:sizes"
META_CLEAN = b"m:clean"
META_FLUSH_BEGIN = b"m:flush"  # first record of every flush on the changelog
_CHANGELOG_META = (META_NEXT_OFFSET, META_USERS, META_SIZES, META_CLEAN)
DEFAULT_CACHE_ROWS = 262_144


class _LearntDeltas:
    """Item learner deltas summed per ``l:`` key: a key -> row index and an
    (n, 1 + dim) float64 array (a batch adds its rows in one numpy step)."""

    def __init__(self, width: int):
        self.index: dict[bytes, int] = {}
        self.values = np.zeros((0, width))

    def add(self, keys: Sequence[bytes], values: np.ndarray) -> None:
        """Add ``values`` (n, width) to distinct ``keys`` (n,)."""
        index = self.index
        at = np.fromiter(
            (index.setdefault(key, len(index)) for key in keys), dtype=np.int64, count=len(keys)
        )
        if len(index) > len(self.values):
            grown = np.zeros((max(len(index), 2 * len(self.values), 256), self.values.shape[1]))
            grown[: len(self.values)] = self.values
            self.values = grown
        self.values[at] += values

    def rows(self) -> dict[bytes, np.ndarray]:
        return {key: self.values[i] for key, i in self.index.items()}


def _add_rows(into: dict[bytes, np.ndarray], more: dict[bytes, np.ndarray]) -> None:
    """Add ``more``'s rows to ``into``'s by key (as new arrays: no array is changed)."""
    for key, value in more.items():
        held = into.get(key)
        into[key] = value if held is None else held + value


@dataclass
class _Flush:
    """A begun flush: its records and the users / size changes they carry."""

    records: list[tuple[bytes, bytes]]
    users: int
    sizes: dict[int, int]
    learnt: _LearntDeltas  # the learner deltas it writes
    learnt_totals: list[tuple[bytes, bytes]]  # and the totals they make (among the records)


class UserPartitionStore:
    """Users of one clicks partition (implements :class:`stream.core.state.UserStore`).

    A write-back cache: ``write_many`` puts rows in memory and marks them
    dirty. A flush is two steps so the hot path can go on between them:
    :meth:`begin_flush` takes the bytes of every dirty row and the meta records
    (next offset, users, sizes) — what goes to the changelog — and starts a
    new set of dirty rows; :meth:`write_flush` (thread-safe) writes what was
    taken to RocksDB in one WriteBatch and :meth:`end_flush` ends the flush.
    One flush at a time. Until it ends, the rows it took stay in the cache
    (never dropped) and count in ``len`` and :attr:`current_sizes`. RocksDB
    holds the state of the last ended flush; :meth:`reset` drops everything
    after it (a failed batch is replayed from there, like after a crash).
    """

    def __init__(self, path: Path, dtype: np.dtype, cache_rows: int = DEFAULT_CACHE_ROWS):
        self.path = Path(path)
        self.dtype = dtype
        self._db = open_db(self.path)
        stored = self._db.get(META_DTYPE)
        signature = str(dtype.descr).encode()
        if stored is not None and stored != signature:
            self._db.close()
            raise ConfigError(
                f"the store at {self.path} was written with other settings (dim, top_m, "
                "recent_items or dedupe_window); remove the data dir or restore the old settings"
            )
        if stored is None:
            self._db.put(META_DTYPE, signature)
        self._cache_rows = max(cache_rows, 1024)
        self._learnt_width = 1 + dtype["mean"].shape[0]  # clicks, then the sum
        self._blank = as_records(blank_rows(dtype, 1))[0]
        self.reset()

    def reset(self) -> None:
        """Back to the state of the last flush (drops the cache and every dirty row)."""
        self._load_meta()
        self._cache_index = Int64Map(1024)
        self._cache = np.zeros(min(self._cache_rows, 4096), dtype=self.dtype)
        self._cache_keys: list[bytes] = []  # user_key of each cache slot
        self._dirty = np.zeros(len(self._cache), dtype=bool)
        self._expired = np.zeros(len(self._cache), dtype=bool)  # dirty as a tombstone
        self.pending_users = 0
        self.pending_sizes: dict[int, int] = {}
        self._learnt = _LearntDeltas(self._learnt_width)  # since the last flush began
        # clicks applied since the last flush BEGAN: the hot path's flush trigger
        # (/stats unflushed_clicks counts from the last flush that ENDED)
        self.clicks_since_flush = 0
        self._flushing: _Flush | None = None

    # -- cache ---------------------------------------------------------------
    @property
    def dirty_count(self) -> int:
        # count_nonzero, not .sum(): flush_due asks after every batch
        return int(np.count_nonzero(self._dirty[: len(self._cache_keys)]))

    def room(self) -> int:
        """Rows the cache can take before it must be flushed and emptied."""
        return self._cache_rows - len(self._cache_keys)

    @property
    def flushing(self) -> bool:
        """A flush was begun and has not ended."""
        return self._flushing is not None

    def _clear_clean_cache(self) -> None:
        if self.dirty_count or self.flushing:
            raise RuntimeError("flush the dirty rows before emptying the cache")
        self._cache_index = Int64Map(1024)
        self._cache_keys = []

    def _cache_put(self, ids: Sequence[str], hashes: np.ndarray, rows: np.ndarray) -> None:
        if len(self._cache_index) + len(hashes) > self._cache_rows:
            self._clear_clean_cache()  # the hot path flushed first (see room())
        before = len(self._cache_index)
        slots = self._cache_index.get_or_insert(hashes)
        need = len(self._cache_index)
        if need > len(self._cache):
            size = min(max(need, 2 * len(self._cache)), self._cache_rows)
            grown = np.zeros(size, self.dtype)
            grown[: len(self._cache)] = self._cache
            self._cache = grown
            dirty = np.zeros(size, dtype=bool)
            dirty[: len(self._dirty)] = self._dirty
            self._dirty = dirty
            expired = np.zeros(size, dtype=bool)
            expired[: len(self._expired)] = self._expired
            self._expired = expired
        if need > before:
            new = np.flatnonzero(slots >= before)
            order = np.argsort(slots[new], kind="stable")
            self._cache_keys.extend(user_key(ids[i]) for i in new[order].tolist())
        as_records(self._cache)[slots] = as_records(rows)
        self._dirty[slots] = True
        self._expired[slots] = False

    @property
    def cached_rows(self) -> int:
        """User records held in the memory cache now."""
        return len(self._cache_keys)

    def memory(self) -> dict[str, int]:
        """Bytes this store holds in memory: its row cache (records and their
        keys' list, not the key objects) and RocksDB's memtables and table
        readers (index and filter blocks); the block cache is shared
        (:func:`stream.app.rocks.block_cache_bytes`)."""
        return {
            "cache_rows": len(self._cache_keys),
            "cache_bytes": self._cache.nbytes + self._dirty.nbytes + self._expired.nbytes,
            **db_memory(self._db),
        }

    def rocksdb_property(self, name: str) -> int:
        """An integer property of the RocksDB store (:func:`stream.app.rocks.db_property`)."""
        return db_property(self._db, name)

    # -- UserStore -------------------------------------------------------------
    def __len__(self) -> int:
        flushing = self._flushing.users if self._flushing is not None else 0
        return self.n_users + flushing + self.pending_users

    def read_many(self, user_ids: Sequence[str], hashes: np.ndarray | None = None) -> UserBatch:
        if hashes is None:
            hashes = str_hashes(user_ids)
        slots = self._cache_index.get(hashes)
        records = as_records(self._cache)[np.maximum(slots, 0)]
        miss = np.flatnonzero(slots < 0)
        new = np.zeros(len(user_ids), dtype=bool)
        gone = np.flatnonzero(slots >= 0)
        gone = gone[self._expired[slots[gone]]]
        if len(gone):  # expired since the last flush: back as new users
            new[gone] = True
            records[gone] = self._blank
        if len(miss):
            values = self._db.get([user_key(user_ids[i]) for i in miss.tolist()])
            stored = np.array([value is not None for value in values], dtype=bool)
            new[miss[~stored]] = True
            records[miss[~stored]] = self._blank
            if stored.any():
                found = [value for value in values if value is not None]
                sizes = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
                size = self.dtype.itemsize
                if (sizes != size).any():
                    bad = int(sizes[sizes != size][0])
                    raise ConfigError(f"a user record in {self.path} has {bad} bytes, not {size}")
                records[miss[stored]] = np.frombuffer(b"".join(found), dtype=records.dtype)
        return UserBatch(list(user_ids), records.view(self.dtype), (hashes, new))

    def write_many(self, batch: UserBatch) -> None:
        """Put rows in the cache, dirty until the next flush."""
        hashes, new = batch.handle if batch.handle is not None else (str_hashes(batch.ids), None)
        self._cache_put(batch.ids, hashes, batch.rows)
        if new is not None:
            self.pending_users += int(new.sum())

    def expire(self, user_ids: Sequence[str], primary: np.ndarray) -> None:
        """Remove users (idle past the TTL): the next flush writes a tombstone
        for each to the changelog and deletes it from RocksDB; ``primary`` (n,)
        int64 their primary cluster ids (-1 = none), whose member counts drop."""
        if not len(user_ids):
            return
        hashes = str_hashes(user_ids)
        rows = blank_rows(self.dtype, len(user_ids))
        self._cache_put(user_ids, hashes, rows)
        self._expired[self._cache_index.get(hashes)] = True
        self.pending_users -= len(user_ids)
        self.stage_sizes(primary, np.full(len(primary), -1, dtype=np.int64))

    def expiry_candidates(self, ttl_ms: int) -> tuple[list[str], int]:
        """Users of the last flush whose newest click is more than ``ttl_ms``
        older than the newest click of any user here (event time, so a replay
        of old clicks expires the same users); and that newest time. Reads
        every record: call off the event loop, and re-check the users against
        the cache (they may have clicked since) before :meth:`expire`."""
        # keys stay bytes: only the idle users' ids are decoded
        keys: list[bytes] = []
        t_ms: list[np.ndarray] = []
        for chunk_keys, t in self._chunk_times():
            keys.extend(chunk_keys)
            t_ms.append(t)
        if not keys:
            return [], 0
        t = np.concatenate(t_ms)
        newest = int(t.max())
        cut = len(USER_PREFIX)
        return [keys[i][cut:].decode("utf-8") for i in np.flatnonzero(t < newest - ttl_ms)], newest

    def _chunk_times(self, size: int = 65536) -> Iterator[tuple[list[bytes], np.ndarray]]:
        """(keys, (n,) int64 newest click times) of every user, ``size`` at a time."""
        keys: list[bytes] = []
        raw: list[bytes] = []
        for key, value in self._db.items(from_key=USER_PREFIX):
            if not key.startswith(USER_PREFIX):
                break
            keys.append(key)
            raw.append(value)
            if len(keys) == size:
                yield keys, np.frombuffer(b"".join(raw), dtype=self.dtype)["t_ms"].copy()
                keys, raw = [], []
        if keys:
            yield keys, np.frombuffer(b"".join(raw), dtype=self.dtype)["t_ms"].copy()

    def stage_sizes(self, before: np.ndarray, after: np.ndarray) -> None:
        """Move users between primary clusters: ``before``/``after`` (n,) int64
        primary ids (-1 = none) of users whose memberships changed."""
        for old, new in zip(before.tolist(), after.tolist(), strict=True):
            if old != new:
                if old >= 0:
                    self.pending_sizes[old] = self.pending_sizes.get(old, 0) - 1
                if new >= 0:
                    self.pending_sizes[new] = self.pending_sizes.get(new, 0) + 1

    @property
    def current_sizes(self) -> dict[int, int]:
        """Members per primary cluster id, including what is not flushed yet."""
        sizes = dict(self.sizes)
        deltas = [self.pending_sizes]
        if self._flushing is not None:
            deltas.append(self._flushing.sizes)
        for delta_of in deltas:
            for cid, delta in delta_of.items():
                sizes[cid] = sizes.get(cid, 0) + delta
        return {cid: n for cid, n in sizes.items() if n != 0}

    # -- what the clicks taught the item learner --------------------------------------
    def stage_learnt(self, keys: Sequence[bytes], values: np.ndarray) -> None:
        """Add the learner's deltas of a batch: ``keys`` (n,) distinct
        :func:`~stream.wire.changelog.learnt_key` keys, ``values`` (n, 1 + dim)
        float64 clicks then sum; written as totals by the next flush."""
        self._learnt.add(keys, values)

    def _unflushed(self) -> dict[bytes, np.ndarray]:
        """Learner deltas RocksDB does not hold yet: staged, and taken by a
        flush that has not ended."""
        deltas = self._learnt.rows()
        if self._flushing is not None:
            _add_rows(deltas, self._flushing.learnt.rows())
        return deltas

    def unflushed_learnt(self) -> tuple[list[str], np.ndarray]:
        """Item ids and (n, 1 + dim) float64 learner deltas that :meth:`reset`
        drops (not in RocksDB yet)."""
        return self._learnt_arrays(self._unflushed())

    def learnt_rows(self) -> tuple[list[str], np.ndarray]:
        """Item ids and (n, 1 + dim) float64 learner totals of this partition,
        what is not flushed yet included."""
        totals: dict[bytes, np.ndarray] = {}
        width = 8 * self._learnt_width
        for key, value in self._db.items(from_key=LEARNT_PREFIX):
            if not key.startswith(LEARNT_PREFIX):
                break
            if len(value) == width:
                totals[key] = np.frombuffer(value, dtype=np.float64)
        _add_rows(totals, self._unflushed())
        return self._learnt_arrays(totals)

    def _learnt_arrays(self, rows: dict[bytes, np.ndarray]) -> tuple[list[str], np.ndarray]:
        out = np.zeros((len(rows), self._learnt_width))
        for i, value in enumerate(rows.values()):
            out[i] = value
        return [learnt_id_of(k) for k in rows], out

    def _learnt_records(self) -> list[tuple[bytes, bytes]]:
        """The staged learner deltas as totals (RocksDB holds every ended flush)."""
        keys = list(self._learnt.index)
        if not keys:
            return []
        totals = self._learnt.values[: len(keys)].copy()
        width = 8 * self._learnt_width
        stored = self._db.get(keys)
        have = [i for i, value in enumerate(stored) if value is not None and len(value) == width]
        if have:
            raw = b"".join(stored[i] for i in have)
            totals[have] += np.frombuffer(raw, dtype=np.float64).reshape(len(have), -1)
        raw = totals.tobytes()
        return [(key, raw[i * width : (i + 1) * width]) for i, key in enumerate(keys)]

    def _meta(self, next_offset: int, clean: bool) -> dict[bytes, bytes]:
        """The meta records as they will be after the flush."""
        return {
            META_NEXT_OFFSET: int_bytes(next_offset),
            META_USERS: int_bytes(len(self)),
            META_SIZES: orjson.dumps({str(k): v for k, v in self.current_sizes.items()}),
            META_CLEAN: int_bytes(next_offset if clean else -1),
        }

    def begin_flush(self, next_offset: int, clean: bool = False) -> list[tuple[bytes, bytes]]:
        """(key, value) of every dirty row and of the meta records: what goes to
        the users changelog, then (:meth:`write_flush`) to RocksDB. The rows are
        clean from now on; later writes make them dirty again for the next
        flush. ``clean`` says no output was produced for clicks at or after
        ``next_offset`` (a graceful hand-over)."""
        if self._flushing is not None:
            raise RuntimeError("a flush is in flight: end it first")
        slots = np.flatnonzero(self._dirty[: len(self._cache_keys)])
        size = self.dtype.itemsize
        keys = self._cache_keys
        # each row's bytes straight from the cache: a gathered copy of every
        # dirty row first costs two fresh allocations of up to cache_rows records
        cache = memoryview(self._cache).cast("B")
        records: list[tuple[bytes, bytes | None]] = [(META_FLUSH_BEGIN, int_bytes(next_offset))]
        if self._expired.any():  # tombstones (value None) for expired users
            gone = self._expired[slots]
            records.extend((keys[s], None) for s in slots[gone].tolist())
            slots = slots[~gone]
        records.extend((keys[s], bytes(cache[s * size : (s + 1) * size])) for s in slots.tolist())
        learnt_totals = self._learnt_records()
        records.extend(learnt_totals)
        records.extend(self._meta(next_offset, clean).items())  # META_CLEAN last
        self._flushing = _Flush(
            records, self.pending_users, self.pending_sizes, self._learnt, learnt_totals
        )
        self._dirty[:] = False
        self.pending_users = 0
        self.pending_sizes = {}
        self._learnt = _LearntDeltas(self._learnt_width)
        self.clicks_since_flush = 0
        return records

    def flushing_learnt(self) -> list[tuple[bytes, bytes]]:
        """The ``l:`` records of the flush in flight: the learnt totals it writes."""
        if self._flushing is None:
            raise RuntimeError("no flush in flight")
        return self._flushing.learnt_totals

    def write_flush(self, changelog_next: int | None) -> None:
        """Write the records of :meth:`begin_flush` (and the changelog position,
        if known) to RocksDB in one WriteBatch. Touches nothing else, so it may
        run on another thread while the hot path goes on; :meth:`end_flush`
        then finishes on the event loop."""
        if self._flushing is None:
            raise RuntimeError("no flush in flight")
        wb = WriteBatch(raw_mode=True)
        for key, value in self._flushing.records:
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        if changelog_next is not None:
            wb.put(META_CHANGELOG_NEXT, int_bytes(changelog_next))
        self._db.write(wb, NO_WAL)

    def end_flush(self) -> None:
        """End the flush (after :meth:`write_flush`): the meta figures are read back."""
        if self._flushing is None:
            raise RuntimeError("no flush in flight")
        self._flushing = None
        self._load_meta()

    def mark_inflight(self, last_offset: int) -> None:
        """Record that outputs of clicks up to ``last_offset`` are about to be
        produced. The marker only moves up: a replay after a crash re-runs
        clicks below it, and lowering it then would let a second crash forget
        that outputs past the replayed batch were sent before the first one."""
        if last_offset > self._inflight:
            self._db.put(META_INFLIGHT, int_bytes(last_offset))
            self._inflight = last_offset

    def inflight(self) -> int:
        """The highest in-flight offset recorded, -1 if none."""
        return self._inflight

    # -- changelog restore -------------------------------------------------------
    def apply_changelog(
        self, records: Iterable[tuple[bytes, bytes | None]], next_offset: int
    ) -> int:
        """Apply users-changelog records (keys as written by this class) and
        remember ``next_offset`` as the changelog position. Returns records applied."""
        wb = WriteBatch(raw_mode=True)
        count = 0
        sizes = {USER_PREFIX: self.dtype.itemsize, LEARNT_PREFIX: 8 * self._learnt_width}
        for key, value in records:
            prefix = key[:2]
            if value is None:
                if prefix in sizes:  # an expired user's tombstone
                    wb.delete(key)
                    count += 1
                continue
            if prefix in sizes and len(value) != sizes[prefix]:
                logger.warning("skipping a changelog record of %s with a bad value", self.path)
                continue
            if prefix in sizes or key in _CHANGELOG_META:
                wb.put(key, value)
                count += 1
        wb.put(META_CHANGELOG_NEXT, int_bytes(next_offset))
        self._db.write(wb, NO_WAL)  # read from the changelog: read again if lost
        self.reset()
        return count

    def _load_meta(self) -> None:
        self.next_offset = read_int(self._db.get(META_NEXT_OFFSET))
        self.changelog_next = read_int(self._db.get(META_CHANGELOG_NEXT))
        self.n_users = read_int(self._db.get(META_USERS))
        self.clean_offset = read_int(self._db.get(META_CLEAN), -1)
        self._inflight = read_int(self._db.get(META_INFLIGHT), -1)
        raw = self._db.get(META_SIZES)
        self.sizes = {int(k): v for k, v in orjson.loads(raw).items()} if raw else {}

    def user_ids(self) -> list[str]:
        """Every user id of this partition (as of the last flush)."""
        out = []
        for key in self._db.keys(from_key=USER_PREFIX):
            if not key.startswith(USER_PREFIX):
                break
            out.append(key[len(USER_PREFIX) :].decode("utf-8"))
        return out

    def iter_chunks(self, size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        """All users of this partition as of the last flush, ``size`` at a time."""
        ids: list[str] = []
        raw: list[bytes] = []
        for key, value in self._db.items(from_key=USER_PREFIX):
            if not key.startswith(USER_PREFIX):
                break
            ids.append(key[len(USER_PREFIX) :].decode("utf-8"))
            raw.append(value)
            if len(ids) == size:
                yield ids, np.frombuffer(b"".join(raw), dtype=self.dtype).copy()
                ids, raw = [], []
        if ids:
            yield ids, np.frombuffer(b"".join(raw), dtype=self.dtype).copy()

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
