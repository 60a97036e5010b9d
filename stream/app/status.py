"""What ``GET /stats`` and ``GET /readyz`` say about a worker.

``stats`` gathers the worker's figures in four groups (what became of the
clicks and CF deltas, the model, the loops and jobs, and on request the
state digest); ``readiness`` says what a worker that is not ready waits for.
"""

from __future__ import annotations

import asyncio
import time

from stream.app.cfowner import CFOwner
from stream.app.hotpath import HotPath
from stream.app.memory import memory_stats
from stream.core.digest import state_digest


def _digest(hotpath: HotPath, cf: CFOwner) -> str:
    chunks = [c for o in hotpath.owned.values() for c in o.store.iter_chunks()]
    return state_digest(chunks, cf.tables(), coclick_tables=[p.coclick for p in cf.owned.values()])


async def stats(worker, with_digest: bool = False) -> dict:
    """The worker's figures; the digest is computed on the hot path's executor
    thread, between batches (both loops' locks held), over the flushed state."""
    hotpath, cf = worker.hotpath, worker.cf
    digest = None
    if with_digest:
        async with hotpath.lock, cf.lock:
            await hotpath.flush_all()
            digest = await asyncio.get_running_loop().run_in_executor(
                hotpath.executor, _digest, hotpath, cf
            )
    return {
        "app_id": worker.runtime.settings.app_id,
        "worker_id": worker.worker_id,
        **_counts(worker),
        **_model(worker),
        **_loops(worker),
        "state_digest": digest,
    }


def _counts(worker) -> dict:
    """What became of the clicks and of the CF deltas."""
    c = worker.runtime.counters
    return {
        "events_applied": c.events_applied,
        "events_rejected": c.events_rejected,
        "duplicates_dropped": c.duplicates_dropped,
        "users_expired": c.users_expired,
        "unknown_items": c.unknown_items,
        "unassigned": c.unassigned,
        "assignments_emitted": c.assignments_emitted,
        "cf_deltas_sent": c.cf_deltas_sent,
        "cf_deltas_applied": c.cf_deltas_applied,
        "cf_deltas_duplicate": c.cf_deltas_duplicate,
        "cf_deltas_local": c.cf_deltas_local,
        "cf_deltas_echo": c.cf_deltas_echo,
        "cf_deltas_rejected": c.cf_deltas_rejected,
        "candidates_sent": worker.cf.candidates_sent,
    }


def _item_vectors(runtime) -> dict | None:
    """The learner's item counts, and whose parts of the sums it holds."""
    if runtime.learner is None:
        return None
    out = runtime.learner.stats(runtime.items)
    parts = runtime.learnt_parts
    if parts is not None:
        out["partitions_own"] = sorted(parts.own)
        out["partitions_published"] = sorted(parts.published)  # never its own
    return out


def _model(worker) -> dict:
    """Items, users, centres and cluster sizes."""
    runtime = worker.runtime
    centres = runtime.centres
    sizes = worker.registry.sizes(dict(centres.aliases) if centres else None)
    return {
        "items": len(runtime.items),
        "items_with_vector": runtime.items.n_with_vector,
        "item_vectors": _item_vectors(runtime),
        "items_rejected": runtime.counters.items_rejected,
        "users": worker.hotpath.users(),
        "centres_version": centres.version if centres is not None else None,
        "centres_reason": centres.reason if centres is not None else None,
        "clusters": centres.k if centres is not None else 0,
        "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
    }


def _loops(worker) -> dict:
    """The loops, jobs and workers: lag, partitions, timings, readiness."""
    runtime = worker.runtime
    hotpath, cf, c = worker.hotpath, worker.cf, runtime.counters
    per_batch = (lambda s: round(1000 * s / c.batches, 3)) if c.batches else None
    return {
        "lag": hotpath.lag(),
        "cf_lag": cf.lag(),
        "partitions": sorted(hotpath.owned),
        "cf_partitions": sorted(cf.owned),
        "cf_entries": sum(len(t) for t in cf.tables()),
        "coclick_entries": sum(len(p.coclick) for p in cf.owned.values()),
        "coclick_rows": sum(p.coclick.n_rows for p in cf.owned.values()),
        "drift": {**hotpath.drift.as_dict(), "detections": c.drift_detections},
        "sweep": {"users": hotpath.swept_users, "changed": hotpath.sweep_changes},
        "jobs": worker.jobs.as_dict(),
        "workers": [{k: r[k] for k in _WORKER_FIELDS} for r in worker.registry.live()],
        "batches": c.batches,
        "flushes": c.flushes,
        "loop_lag_max_ms_1m": round(1000 * runtime.loop_lag_max_s, 1),
        "memory": memory_stats(hotpath, cf),
        "stalls": {**hotpath.stalls.counts, "fetch_wait_ms": hotpath.fetch_wait_ms},
        "cf_stalls": dict(cf.stalls.counts),
        "batch_ms_mean": per_batch(c.batch_seconds) if per_batch else None,
        "batch_ms_by_step": (
            {k: per_batch(v) for k, v in sorted(c.stage_seconds.items())} if per_batch else {}
        ),
        "leader": runtime.is_leader(),
        "broker": worker.broker.as_dict(),
        "ready": hotpath.ready(),
        "unflushed_clicks": hotpath.unflushed(),
        "ready_at": round(hotpath.ready_at, 3) if hotpath.ready_at is not None else None,
        "uptime_s": round(time.time() - runtime.started_at, 1),
    }


_WORKER_FIELDS = ("worker_id", "url", "leader", "clicks_partitions", "cf_partitions", "ts")


def readiness(worker) -> dict:
    """For ``GET /readyz``: ready once the feeds are read, the clicks group is
    joined and the stores restored. No centre set yet is ready too (the
    bootstrap needs clicks): ``centres`` then says what it waits for."""
    runtime, hotpath = worker.runtime, worker.hotpath
    waiting = []
    if not runtime.items_ready.is_set():
        waiting.append("reading the items and centres topics")
    elif not hotpath.running.is_set():
        waiting.append("loading the compiled kernels")
    elif hotpath.ready_at is None:
        waiting.append("joining the clicks consumer group and restoring its partitions")
    centres = runtime.centres
    if centres is not None:
        about = {"version": centres.version, "reason": centres.reason, "k": centres.k}
    else:
        about = {
            "version": None,
            "bootstrap_pending": (
                f"no centre set yet: the leader makes one when its partitions hold "
                f"{runtime.settings.bootstrap_users} users with a vector; this worker "
                f"holds {hotpath.users()} users"
            ),
        }
    return {
        "ready": not waiting,
        "waiting_for": waiting,
        "partitions": sorted(hotpath.owned),
        "centres": about,
    }
