"""Web views of a worker.

| route | what |
|---|---|
| ``GET /stats`` | counters, lag, centres, jobs; ``?digest=0`` skips the state digest |
| ``GET /users/{user_id}/recommendations?n=10&exclude_seen=true`` | any worker; forwarded to the user's owner |
| ``GET /clusters/{cluster_id}?n=10`` | size, centres version, alias if retired, top items |
| ``GET /clusters/{cluster_id}/top?n=10`` | the cluster's CF top items (from the table's owner) |
| ``POST /admin/merge?min_size=N&dry_run=true`` | run the merge rule on the leader |
| ``POST /admin/recompute?k=K&k_range=A:B&sample=N&dry_run=true`` | recompute on the leader |
| ``GET /debug/cf-applied`` | latency trace of applied CF deltas (``trace_latency``) |
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from faust.web import View

from stream.app.cfowner import CFOwner
from stream.app.hotpath import HotPath
from stream.app.jobs import JobError
from stream.app.runtime import Runtime
from stream.app.serving import FORWARDED, NotHere
from stream.core.digest import state_digest
from stream.settings import parse_k_range

ROUTE_RETRY_S = 5.0  # how long a request waits for its user's partition to have an owner


def _digest(hotpath: HotPath, cf: CFOwner) -> str:
    chunks = [c for o in hotpath.owned.values() for c in o.store.iter_chunks()]
    return state_digest(chunks, cf.tables())


async def stats(worker, with_digest: bool = True) -> dict:
    """The worker's figures; the digest is computed on the hot-path thread,
    between batches, over the committed state."""
    runtime: Runtime = worker.runtime
    hotpath, cf = worker.hotpath, worker.cf
    c = runtime.counters
    centres = runtime.centres
    digest = None
    if with_digest:
        async with hotpath.lock, cf.lock:
            await hotpath.flush_all()
            digest = await asyncio.get_running_loop().run_in_executor(
                hotpath.executor, _digest, hotpath, cf
            )
    sizes = worker.registry.sizes(dict(centres.aliases) if centres else None)
    return {
        "app_id": runtime.settings.app_id,
        "worker_id": worker.worker_id,
        "events_applied": c.events_applied,
        "events_rejected": c.events_rejected,
        "unknown_items": c.unknown_items,
        "unassigned": c.unassigned,
        "assignments_emitted": c.assignments_emitted,
        "cf_deltas_sent": c.cf_deltas_sent,
        "cf_deltas_applied": c.cf_deltas_applied,
        "cf_deltas_duplicate": c.cf_deltas_duplicate,
        "cf_deltas_local": c.cf_deltas_local,
        "cf_deltas_echo": c.cf_deltas_echo,
        "cf_deltas_rejected": c.cf_deltas_rejected,
        "candidates_sent": cf.candidates_sent,
        "items": len(runtime.items),
        "items_with_vector": runtime.items.n_with_vector,
        "items_rejected": c.items_rejected,
        "users": hotpath.users(),
        "centres_version": centres.version if centres is not None else None,
        "centres_reason": centres.reason if centres is not None else None,
        "clusters": centres.k if centres is not None else 0,
        "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "lag": hotpath.lag(),
        "cf_lag": cf.lag(),
        "partitions": sorted(hotpath.owned),
        "cf_partitions": sorted(cf.owned),
        "cf_entries": sum(len(t) for t in cf.tables()),
        "drift": {**hotpath.drift.as_dict(), "detections": c.drift_detections},
        "sweep": {"users": hotpath.swept_users, "changed": hotpath.sweep_changes},
        "jobs": worker.jobs.as_dict(),
        "workers": [
            {
                k: r[k]
                for k in ("worker_id", "url", "leader", "clicks_partitions", "cf_partitions", "ts")
            }
            for r in worker.registry.live()
        ],
        "batches": c.batches,
        "flushes": c.flushes,
        "loop_lag_max_ms_1m": round(1000 * runtime.loop_lag_max_s, 1),
        "batch_ms_mean": round(1000 * c.batch_seconds / c.batches, 3) if c.batches else None,
        "batch_ms_by_step": {
            k: round(1000 * v / c.batches, 3) for k, v in sorted(c.stage_seconds.items())
        }
        if c.batches
        else {},
        "leader": runtime.is_leader(),
        "broker": worker.broker.as_dict(),
        "ready": hotpath.ready(),
        "unflushed_clicks": hotpath.unflushed(),
        "ready_at": round(hotpath.ready_at, 3) if hotpath.ready_at is not None else None,
        "uptime_s": round(time.time() - runtime.started_at, 1),
        "state_digest": digest,
    }


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.lower() not in ("0", "false", "no", "off")


def _int(value: str | None, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def register(app, worker) -> None:
    """Add every route of this module to the faust app."""
    server = worker.server

    async def forward(view: View, request, url: str, path: str, method: str = "get"):
        if request.headers.get(FORWARDED):
            return view.json({"error": "forwarding loop: the owner moved"}, status=503)
        params = dict(request.query)
        if method == "get":
            status, body = await server.get_json(f"{url}{path}", params)
        else:
            status, body = await server.post_json(f"{url}{path}", params)
        return view.json(body, status=status)

    def guarded(handler):
        async def run(view: View, request, **kwargs):
            try:
                return await handler(view, request, **kwargs)
            except NotHere as exc:
                return view.json({"error": str(exc)}, status=503)
            except JobError as exc:
                return view.json({"error": str(exc)}, status=409)
            except ValueError as exc:
                return view.json({"error": str(exc)}, status=400)

        return run

    @app.page("/stats")
    class Stats(View):
        async def get(self, request):
            return self.json(await stats(worker, _flag(request.query.get("digest"), True)))

    @app.page("/debug/cf-applied")
    class CFApplied(View):
        async def get(self, request):
            return self.json({"applied": list(worker.cf.applied_trace)})

    @guarded
    async def recommendations(view, request, user_id):
        n = _int(request.query.get("n"), "n", 10)
        if not 1 <= n <= 1000:
            raise ValueError("n must be between 1 and 1000")
        exclude = _flag(request.query.get("exclude_seen"), True)
        # a rebalance moves partitions for a second or two: ask the new owner
        deadline = time.monotonic() + (0 if request.headers.get(FORWARDED) else ROUTE_RETRY_S)
        while True:
            try:
                url = await server.owner_of_user(user_id)
                if url is None:
                    return view.json(await server.recommendations(user_id, n, exclude))
                if request.headers.get(FORWARDED):
                    raise NotHere("forwarding loop: the owner moved")
                path = f"{url}/users/{user_id}/recommendations"
                status, body = await server.get_json(path, dict(request.query))
                if status == 503:  # the owner we knew has moved it on meanwhile
                    raise NotHere(body.get("error", "the owner did not answer"))
                return view.json(body, status=status)
            except (NotHere, aiohttp.ClientConnectionError) as exc:
                if time.monotonic() >= deadline:
                    raise NotHere(str(exc) or repr(exc)) from exc
            await asyncio.sleep(0.25)

    @app.page("/users/{user_id}/recommendations")
    class Recommendations(View):
        async def get(self, request, user_id):
            return await recommendations(self, request, user_id=user_id)

    @guarded
    async def cluster(view, request, cluster_id):
        cid = _int(cluster_id, "cluster_id")
        return view.json(await server.cluster(cid, _int(request.query.get("n"), "n", 10)))

    @app.page("/clusters/{cluster_id}")
    class Cluster(View):
        async def get(self, request, cluster_id):
            return await cluster(self, request, cluster_id=cluster_id)

    @guarded
    async def top(view, request, cluster_id):
        cid = _int(cluster_id, "cluster_id")
        n = _int(request.query.get("n"), "n", 10)
        items = await server.top_items(cid, n)
        return view.json(
            {"cluster_id": cid, "items": [{"item_id": i, "score": s} for i, s in items]}
        )

    @app.page("/clusters/{cluster_id}/top")
    class Top(View):
        async def get(self, request, cluster_id):
            return await top(self, request, cluster_id=cluster_id)

    @guarded
    async def admin_merge(view, request):
        if not worker.runtime.is_leader():
            url = worker.registry.leader_url()
            if url is None:
                raise NotHere("no live leader")
            return await forward(view, request, url, "/admin/merge", "post")
        q = request.query
        report = await worker.jobs.merge(
            _int(q.get("min_size"), "min_size"), _flag(q.get("dry_run"), False)
        )
        return view.json(report)

    @app.page("/admin/merge")
    class Merge(View):
        async def post(self, request):
            return await admin_merge(self, request)

    @guarded
    async def admin_recompute(view, request):
        if not worker.runtime.is_leader():
            url = worker.registry.leader_url()
            if url is None:
                raise NotHere("no live leader")
            return await forward(view, request, url, "/admin/recompute", "post")
        q = request.query
        if q.get("why") == "drift":
            await worker.jobs.recompute_on_drift()
            return view.json(worker.jobs.as_dict())
        k_range = parse_k_range(q["k_range"]) if q.get("k_range") else None
        report = await worker.jobs.recompute(
            k=_int(q.get("k"), "k"),
            k_range=k_range,
            sample=_int(q.get("sample"), "sample"),
            dry_run=_flag(q.get("dry_run"), False),
        )
        return view.json(report)

    @app.page("/admin/recompute")
    class Recompute(View):
        async def post(self, request):
            return await admin_recompute(self, request)
