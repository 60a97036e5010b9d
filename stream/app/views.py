"""Web views of a worker: ``GET /stats`` (JSON)."""

from __future__ import annotations

import asyncio
import time

from stream.app.cfowner import CFOwner
from stream.app.hotpath import HotPath
from stream.app.runtime import Runtime
from stream.core.digest import state_digest


def _digest(hotpath: HotPath, cf: CFOwner) -> str:
    chunks = [c for o in hotpath.owned.values() for c in o.store.iter_chunks()]
    return state_digest(chunks, cf.tables())


async def stats(runtime: Runtime, hotpath: HotPath, cf: CFOwner, with_digest: bool = True) -> dict:
    """The worker's figures; the digest is computed on the hot-path thread,
    between batches, over the committed state."""
    c = runtime.counters
    centres = runtime.centres
    digest = None
    if with_digest:
        async with hotpath.lock, cf.lock:
            digest = await asyncio.get_running_loop().run_in_executor(
                hotpath.executor, _digest, hotpath, cf
            )
    return {
        "app_id": runtime.settings.app_id,
        "events_applied": c.events_applied,
        "events_rejected": c.events_rejected,
        "unknown_items": c.unknown_items,
        "unassigned": c.unassigned,
        "assignments_emitted": c.assignments_emitted,
        "cf_deltas_sent": c.cf_deltas_sent,
        "cf_deltas_applied": c.cf_deltas_applied,
        "cf_deltas_duplicate": c.cf_deltas_duplicate,
        "cf_deltas_rejected": c.cf_deltas_rejected,
        "items": len(runtime.items),
        "items_with_vector": runtime.items.n_with_vector,
        "items_rejected": c.items_rejected,
        "users": hotpath.users(),
        "centres_version": centres.version if centres is not None else None,
        "centres_reason": centres.reason if centres is not None else None,
        "clusters": centres.k if centres is not None else 0,
        "lag": hotpath.lag(),
        "cf_lag": cf.lag(),
        "partitions": sorted(hotpath.owned),
        "cf_partitions": sorted(cf.owned),
        "cf_entries": sum(len(t) for t in cf.tables()),
        "drift": {**hotpath.drift.as_dict(), "detections": c.drift_detections},
        "batches": c.batches,
        "batch_ms_mean": round(1000 * c.batch_seconds / c.batches, 3) if c.batches else None,
        "leader": runtime.is_leader(),
        "ready": hotpath.running.is_set(),
        "uptime_s": round(time.time() - runtime.started_at, 1),
        "state_digest": digest,
    }
