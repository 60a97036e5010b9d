"""Idle-user expiry of one owned clicks partition, between batches.

Users whose newest click is more than ``user_ttl_s`` older than the newest
click of the partition (event time, so a replay expires the same users) are
removed: their records become tombstones at the next flush (changelog and
RocksDB), their primary cluster's member count drops, and an assignment
record with no memberships says they left. A removed user who clicks again
starts from a blank record. The hot path's ``_expire`` task runs
:func:`expire_idle`.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from stream.app.partition import ClicksPartition
from stream.core.pipeline import AssignmentChanges
from stream.wire.assignments import assignment_records

logger = logging.getLogger(__name__)

EXPIRE_CHUNK = 4096  # idle users expired at a time between batches


async def expire_idle(hotpath) -> None:
    """Every ``user_ttl_check_s``, expire the idle users of each partition
    ``hotpath`` (a :class:`stream.app.hotpath.HotPath`) owns; until it stops."""
    settings = hotpath.runtime.settings
    if settings.user_ttl_s <= 0:
        return
    ttl_ms = int(settings.user_ttl_s * 1000)
    while not hotpath.should_stop:
        await hotpath.sleep(settings.user_ttl_check_s)
        if not hotpath.ready():
            continue
        for partition in sorted(hotpath.owned):
            owned = hotpath.owned.get(partition)
            if owned is None:
                continue
            try:
                await expire_partition(hotpath, owned, ttl_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("expiry of clicks partition %d failed", partition)


async def expire_partition(hotpath, owned: ClicksPartition, ttl_ms: int) -> None:
    """Expire the idle users of ``owned`` (a partition of ``hotpath``, a
    :class:`stream.app.hotpath.HotPath`), a chunk at a time under its lock."""
    async with hotpath.lock:
        if hotpath.owned.get(owned.partition) is not owned:
            return
        await owned.flush()  # the listing below reads RocksDB
    # on the executor that also closes the store: never at the same time
    ids, newest = await hotpath.off_loop(owned.store.expiry_candidates, ttl_ms)
    expired = 0
    # a chunk at a time, batches running between: a whole partition's idle
    # users at once would hold the loop (reads, records, sends) for long
    chunk = min(EXPIRE_CHUNK, hotpath.runtime.settings.user_cache_rows // 2)  # fits the cache
    for start in range(0, len(ids), chunk):
        async with hotpath.lock:
            if hotpath.owned.get(owned.partition) is not owned:
                return
            expired += await expire_chunk(
                hotpath.runtime, owned, ids[start : start + chunk], newest, ttl_ms
            )
        await asyncio.sleep(0)
    if expired:
        logger.info(
            "clicks partition %d: %d users idle for over %.0fs expired",
            owned.partition, expired, ttl_ms / 1000,
        )  # fmt: skip


async def expire_chunk(
    runtime, owned: ClicksPartition, ids: list[str], newest: int, ttl_ms: int
) -> int:
    """Expire those of ``ids`` still idle (they may have clicked since the
    listing); returns how many. Call with the hot path's lock held."""
    rows = owned.store.read_many(ids).rows
    idle = np.flatnonzero((rows["t_ms"] < newest - ttl_ms) & (rows["clicks"] > 0))
    if not len(idle):
        return 0
    if owned.store.room() < len(idle):
        await owned.flush()  # the cache must not drop dirty rows
    gone = [ids[i] for i in idle.tolist()]
    before_ids, before_scores = rows["cluster_ids"][idle], rows["scores"][idle]
    owned.store.expire(gone, before_ids[:, 0].copy())
    changes = AssignmentChanges(
        gone, before_ids, before_scores, np.full_like(before_ids, -1),
        np.zeros_like(before_scores), np.full(len(gone), newest, dtype=np.int64),
    )  # fmt: skip
    version = runtime.centres.version if runtime.centres is not None else 0
    records = assignment_records(changes, owned.partition, version, changes.ts)
    owned.pending += runtime.producer.send_nowait(runtime.topics.assignments, records)
    runtime.counters.users_expired += len(gone)
    runtime.counters.assignments_emitted += len(records)
    return len(gone)
