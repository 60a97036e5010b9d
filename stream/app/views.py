"""Web views of a worker.

| route | what |
|---|---|
| ``GET /stats`` | counters, lag, centres, jobs (cheap); ``?digest=1`` adds the state digest |
| ``GET /metrics`` | Prometheus text exposition (:mod:`stream.app.metrics`) |
| ``GET /healthz`` | 200 while the event loop answers |
| ``GET /readyz`` | 200 once the group is joined and the stores restored, else 503 with why |
| ``GET /users/{user_id}/recommendations?n=10&exclude_seen=true`` | any worker; forwarded to the user's owner |
| ``GET /clusters/{cluster_id}?n=10`` | size, centres version, alias if retired, top items |
| ``GET /clusters/{cluster_id}/top?n=10`` | the cluster's CF top items (from the table's owner) |
| ``POST /admin/merge?min_size=N&dry_run=true`` | run the merge rule on the leader |
| ``POST /admin/recompute?k=K&k_range=A:B&sample=N&dry_run=true`` | recompute on the leader |
| ``GET /debug/cf-applied`` | latency trace of applied CF deltas (``trace_latency``); ``since`` |

``POST /admin/*`` need ``Authorization: Bearer <admin_token>``; without an
``admin_token`` setting they answer 403. Every route answers 400 to a query
parameter it does not know, ``n`` above 1000 or an id longer than
:data:`ID_MAX_LEN`.
"""

from __future__ import annotations

import asyncio
import hmac
import time

import aiohttp
from faust.web import View

from stream.app.cfowner import CFOwner
from stream.app.hotpath import HotPath
from stream.app.jobs import JobError
from stream.app.memory import memory_stats
from stream.app.metrics import CONTENT_TYPE
from stream.app.runtime import Runtime
from stream.app.serving import FORWARDED, NotHere
from stream.core.digest import state_digest
from stream.settings import parse_k_range

ID_MAX_LEN = 256  # characters of a user or cluster id in a path
N_MAX = 1000  # items a read may ask for
ROUTE_RETRY_S = 5.0  # how long a request waits for its user's partition to have an owner


def _digest(hotpath: HotPath, cf: CFOwner) -> str:
    chunks = [c for o in hotpath.owned.values() for c in o.store.iter_chunks()]
    return state_digest(chunks, cf.tables())


async def stats(worker, with_digest: bool = False) -> dict:
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
        "candidates_sent": cf.candidates_sent,
        "items": len(runtime.items),
        "items_with_vector": runtime.items.n_with_vector,
        "item_vectors": (
            runtime.learner.stats(runtime.items) if runtime.learner is not None else None
        ),
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
        "memory": memory_stats(hotpath),
        "stalls": {**hotpath.stalls.counts, "fetch_wait_ms": hotpath.fetch_wait_ms},
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


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.lower() not in ("0", "false", "no", "off")


def applied_since(trace, since: float | None) -> list:
    """Entries ``(partition, offset, unix time)`` of the applied-deltas trace
    (:class:`stream.app.trace.AppliedTrace`, or any sequence of such tuples),
    oldest first, applied after ``since`` (all if None): a reader polling
    with the last time it saw gets what is new, not the whole trace (up to a
    million entries, whose encoding held the event loop).

    >>> applied_since([(0, 5, 1.0), (1, 3, 2.0), (0, 9, 3.0)], 1.5)
    [(1, 3, 2.0), (0, 9, 3.0)]
    >>> len(applied_since([(0, 5, 1.0)], None)), applied_since([(0, 5, 1.0)], 1.0)
    (1, [])
    """
    if since is None:
        return list(trace)
    if hasattr(trace, "since"):
        return [(int(p), int(o), t) for p, o, t in trace.since(since).tolist()]
    return [entry for entry in trace if entry[2] > since]


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"since must be a unix time in seconds, not {value!r}") from None


def _int(
    value: str | None, name: str, default: int | None = None, lo: int = 0, hi: int | None = None
) -> int | None:
    """``value`` as an int in ``lo..hi`` (``default`` when absent); ValueError otherwise."""
    if value is None or value == "":
        return default
    if len(value) > 20:
        raise ValueError(f"{name} must be an integer of at most 20 characters")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < lo or (hi is not None and number > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bound}, got {number}")
    return number


def _id(value: str, name: str) -> str:
    if len(value) > ID_MAX_LEN:
        raise ValueError(f"{name} must be at most {ID_MAX_LEN} characters")
    return value


def check_query(query, allowed: frozenset[str]) -> None:
    """ValueError naming the first query parameter not in ``allowed``."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        name = unknown[0][:64]
        known = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown query parameter {name!r} (this route takes: {known})")


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``token`` (constant-time comparison).

    >>> bearer_ok("Bearer s3cret", "s3cret"), bearer_ok("Bearer nope", "s3cret")
    (True, False)
    >>> bearer_ok(None, "s3cret"), bearer_ok("s3cret", "s3cret")
    (False, False)
    """
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


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

    def guarded(handler, allowed: frozenset[str] = frozenset(), admin: bool = False):
        """Errors as one-line JSON bodies; for ``admin`` routes, the token first."""

        async def run(view: View, request, **kwargs):
            if admin:
                token = worker.runtime.settings.admin_token
                if token is None:
                    return view.json(
                        {"error": "admin endpoints are disabled: set CLUSTERSTREAM_ADMIN_TOKEN "
                                  "(the same on every worker) to enable them"},
                        status=403,
                    )  # fmt: skip
                if not bearer_ok(request.headers.get("Authorization"), token.get_secret_value()):
                    return view.json(
                        {"error": "missing or wrong admin token: send the header "
                                  "'Authorization: Bearer <CLUSTERSTREAM_ADMIN_TOKEN>'"},
                        status=401, headers={"WWW-Authenticate": "Bearer"},
                    )  # fmt: skip
            try:
                check_query(request.query, allowed)
                return await handler(view, request, **kwargs)
            except NotHere as exc:
                return view.json({"error": str(exc)}, status=503)
            except JobError as exc:
                return view.json({"error": str(exc)}, status=409)
            except ValueError as exc:
                return view.json({"error": str(exc)}, status=400)

        return run

    async def _stats(view, request):
        return view.json(await stats(worker, _flag(request.query.get("digest"), False)))

    stats_view = guarded(_stats, frozenset({"digest"}))

    @app.page("/stats")
    class Stats(View):
        async def get(self, request):
            return await stats_view(self, request)

    async def _metrics(view, request):
        return view.bytes(worker.runtime.metrics.exposition(), content_type=CONTENT_TYPE)

    metrics_view = guarded(_metrics)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request):
            return await metrics_view(self, request)

    async def _healthz(view, request):
        return view.json({"status": "ok", "worker_id": worker.worker_id})

    healthz_view = guarded(_healthz)

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request):
            return await healthz_view(self, request)

    async def _readyz(view, request):
        body = readiness(worker)
        return view.json(body, status=200 if body["ready"] else 503)

    readyz_view = guarded(_readyz)

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request):
            return await readyz_view(self, request)

    async def _cf_applied(view, request):
        since = _since(request.query.get("since"))
        return view.json({"applied": applied_since(worker.cf.applied_trace, since)})

    cf_applied_view = guarded(_cf_applied, frozenset({"since"}))

    @app.page("/debug/cf-applied")
    class CFApplied(View):
        async def get(self, request):
            return await cf_applied_view(self, request)

    async def _recommendations(view, request, user_id):
        _id(user_id, "user_id")
        n = _int(request.query.get("n"), "n", 10, 1, N_MAX)
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

    recommendations = guarded(_recommendations, frozenset({"n", "exclude_seen"}))

    @app.page("/users/{user_id}/recommendations")
    class Recommendations(View):
        async def get(self, request, user_id):
            return await recommendations(self, request, user_id=user_id)

    async def _cluster(view, request, cluster_id):
        cid = _int(_id(cluster_id, "cluster_id"), "cluster_id", lo=-(2**63))
        return view.json(await server.cluster(cid, _int(request.query.get("n"), "n", 10, 1, N_MAX)))

    cluster = guarded(_cluster, frozenset({"n"}))

    @app.page("/clusters/{cluster_id}")
    class Cluster(View):
        async def get(self, request, cluster_id):
            return await cluster(self, request, cluster_id=cluster_id)

    async def _top(view, request, cluster_id):
        cid = _int(_id(cluster_id, "cluster_id"), "cluster_id", lo=-(2**63))
        n = _int(request.query.get("n"), "n", 10, 1, N_MAX)
        items = await server.top_items(cid, n)
        return view.json(
            {"cluster_id": cid, "items": [{"item_id": i, "score": s} for i, s in items]}
        )

    top = guarded(_top, frozenset({"n"}))

    @app.page("/clusters/{cluster_id}/top")
    class Top(View):
        async def get(self, request, cluster_id):
            return await top(self, request, cluster_id=cluster_id)

    async def _admin_merge(view, request):
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

    admin_merge = guarded(_admin_merge, frozenset({"min_size", "dry_run"}), admin=True)

    @app.page("/admin/merge")
    class Merge(View):
        async def post(self, request):
            return await admin_merge(self, request)

    async def _admin_recompute(view, request):
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
            k=_int(q.get("k"), "k", lo=1),
            k_range=k_range,
            sample=_int(q.get("sample"), "sample", lo=1),
            dry_run=_flag(q.get("dry_run"), False),
        )
        return view.json(report)

    admin_recompute = guarded(
        _admin_recompute, frozenset({"k", "k_range", "sample", "dry_run", "why"}), admin=True
    )

    @app.page("/admin/recompute")
    class Recompute(View):
        async def post(self, request):
            return await admin_recompute(self, request)
