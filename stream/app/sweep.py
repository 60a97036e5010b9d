"""The eager sweep: every owned user re-assigned after a new centre set.

Users are otherwise re-assigned lazily at their next click. The sweep goes
through each owned clicks partition a chunk at a time between batches, at
most ``sweep_rate`` users per second; a newer centre set stops it (the next
sweep covers it). Like a batch, a chunk's rows are staged in the store and
flushed with the next flush; its assignment records are awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time

from stream.app.partition import ClicksPartition
from stream.core.centres import CentreSet
from stream.core.pipeline import EngineState, reassign
from stream.wire.assignments import assignment_records

logger = logging.getLogger(__name__)

SWEEP_CHUNK = 1000  # users re-assigned at a time, under the hot path's lock


async def sweep(hotpath, centres: CentreSet) -> None:
    """Re-assign every user of ``hotpath``'s owned partitions to ``centres``."""
    settings = hotpath.runtime.settings
    chunk = SWEEP_CHUNK
    for partition in sorted(hotpath.owned):
        owned = hotpath.owned.get(partition)
        if owned is None:
            continue
        async with hotpath.lock:
            if hotpath.owned.get(partition) is not owned:
                continue
            try:
                await owned.flush()  # so the listing has every user
            except Exception:
                logger.exception("sweep: flush of clicks partition %d failed", partition)
                continue
        ids = await hotpath.off_loop(owned.store.user_ids)
        for start in range(0, len(ids), chunk):
            if hotpath.should_stop or hotpath.runtime.centres is not centres:
                break  # a newer set: the next sweep covers it
            began = time.monotonic()
            async with hotpath.lock:
                if hotpath.owned.get(partition) is not owned:
                    break  # revoked meanwhile
                await sweep_chunk(hotpath, owned, ids[start : start + chunk])
            await asyncio.sleep(max(chunk / settings.sweep_rate - (time.monotonic() - began), 0))
    logger.info("sweep done: %d users re-assigned to version %d, %d changed",
                hotpath.swept_users, centres.version, hotpath.sweep_changes)  # fmt: skip


async def sweep_chunk(hotpath, owned: ClicksPartition, user_ids: list[str]) -> None:
    """Re-assign ``user_ids`` of ``owned``; a failure sends the partition back
    to its last flush. Call with the hot path's lock held."""
    runtime = hotpath.runtime
    store = owned.store
    centres = runtime.centres
    state = EngineState(
        config=runtime.engine, users=store, items=runtime.items, centres=centres,
        first_clicks=runtime.first_clicks, learner=runtime.learner,
    )  # fmt: skip
    try:
        if store.room() < len(user_ids):
            await owned.flush()
        changes = reassign(state, user_ids)
        store.stage_sizes(changes.before_ids[:, 0], changes.ids[:, 0])
        records = assignment_records(changes, owned.partition, centres.version, changes.ts)
        await runtime.producer.send(runtime.topics.assignments, records)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("sweep of clicks partition %d failed", owned.partition)
        await owned.reset()
        return
    hotpath.swept_users += len(user_ids)
    hotpath.sweep_changes += len(changes)
    runtime.counters.assignments_emitted += len(records)
