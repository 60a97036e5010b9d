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
| ``GET /clusters/{cluster_id}/coclicks?item=I&key=K&n=50&at=T`` | co-click rows of items (ids ``I`` or keys ``K``, repeatable) in the cluster (-1: global), read at ``T`` ms |
| ``POST /admin/merge?min_size=N&dry_run=true`` | run the merge rule on the leader |
| ``POST /admin/recompute?k=K&k_range=A:B&sample=N&dry_run=true`` | recompute on the leader |
| ``GET /debug/cf-applied`` | latency trace of applied CF deltas (``trace_latency``); ``since`` |
| ``GET /debug/clicks-fetched`` | the same of fetched clicks (partition, last offset, time) |

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

from stream.app.jobs import JobError
from stream.app.metrics import CONTENT_TYPE
from stream.app.serving import FORWARDED, NotHere
from stream.app.status import readiness, stats
from stream.core.items import item_key
from stream.settings import parse_k_range

ID_MAX_LEN = 256  # characters of a user or cluster id in a path
N_MAX = 1000  # items a read may ask for
ROUTE_RETRY_S = 5.0  # how long a request waits for its user's partition to have an owner


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.lower() not in ("0", "false", "no", "off")


def trace_since(trace, since: float | None) -> list:
    """Entries ``(partition, offset, unix time)`` of a latency trace
    (:class:`stream.app.trace.LatencyTrace`, or any sequence of such tuples),
    oldest first, noted after ``since`` (all if None): a reader polling
    with the last time it saw gets what is new, not the whole trace (up to a
    million entries, whose encoding held the event loop).

    >>> trace_since([(0, 5, 1.0), (1, 3, 2.0), (0, 9, 3.0)], 1.5)
    [(1, 3, 2.0), (0, 9, 3.0)]
    >>> len(trace_since([(0, 5, 1.0)], None)), trace_since([(0, 5, 1.0)], 1.0)
    (1, [])
    """
    if since is None:
        return list(trace)
    if hasattr(trace, "since"):
        return [(int(p), int(o), t) for p, o, t in trace.since(since).tolist()]
    return [entry for entry in trace if entry[2] > since]


def _trace_view(view, request, key: str, trace):
    """``{key: rows}`` of ``trace`` since the request's ``since``."""
    return view.json({key: trace_since(trace, _since(request.query.get("since")))})


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


class Routes:
    """The worker's route handlers. Each takes ``(view, request, **path
    parameters)`` and returns a response; :meth:`guarded` wraps one with the
    admin token check and turns errors into one-line JSON bodies."""

    def __init__(self, worker):
        self.worker = worker
        self.server = worker.server

    def guarded(self, handler, allowed: frozenset[str] = frozenset(), admin: bool = False):
        """``handler`` behind the checks every route shares (see the module doc)."""

        async def run(view: View, request, **kwargs):
            if admin:
                refused = self._refuse_admin(view, request)
                if refused is not None:
                    return refused
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

    def _refuse_admin(self, view: View, request):
        """A 403 / 401 response when admin routes are off or the token is wrong, else None."""
        token = self.worker.runtime.settings.admin_token
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
        return None

    async def _forward(self, view: View, request, url: str, path: str, method: str = "get"):
        if request.headers.get(FORWARDED):
            return view.json({"error": "forwarding loop: the owner moved"}, status=503)
        params = dict(request.query)
        if method == "get":
            status, body = await self.server.get_json(f"{url}{path}", params)
        else:
            status, body = await self.server.post_json(f"{url}{path}", params)
        return view.json(body, status=status)

    async def _on_leader(self, view: View, request, path: str):
        """None on the leader; else the leader's answer to the same request."""
        if self.worker.runtime.is_leader():
            return None
        url = self.worker.registry.leader_url()
        if url is None:
            raise NotHere("no live leader")
        return await self._forward(view, request, url, path, "post")

    # -- operators ---------------------------------------------------------------

    async def stats(self, view, request):
        return view.json(await stats(self.worker, _flag(request.query.get("digest"), False)))

    async def metrics(self, view, request):
        return view.bytes(self.worker.runtime.metrics.exposition(), content_type=CONTENT_TYPE)

    async def healthz(self, view, request):
        return view.json({"status": "ok", "worker_id": self.worker.worker_id})

    async def readyz(self, view, request):
        body = readiness(self.worker)
        return view.json(body, status=200 if body["ready"] else 503)

    async def cf_applied(self, view, request):
        return _trace_view(view, request, "applied", self.worker.cf.applied_trace)

    async def clicks_fetched(self, view, request):
        return _trace_view(view, request, "fetched", self.worker.hotpath.fetched_trace)

    # -- serving -----------------------------------------------------------------

    async def recommendations(self, view, request, user_id):
        _id(user_id, "user_id")
        n = _int(request.query.get("n"), "n", 10, 1, N_MAX)
        exclude = _flag(request.query.get("exclude_seen"), True)
        server = self.server
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

    async def cluster(self, view, request, cluster_id):
        cid = _int(_id(cluster_id, "cluster_id"), "cluster_id", lo=-(2**63))
        n = _int(request.query.get("n"), "n", 10, 1, N_MAX)
        return view.json(await self.server.cluster(cid, n))

    async def top(self, view, request, cluster_id):
        cid = _int(_id(cluster_id, "cluster_id"), "cluster_id", lo=-(2**63))
        n = _int(request.query.get("n"), "n", 10, 1, N_MAX)
        items = await self.server.top_items(cid, n)
        return view.json(
            {"cluster_id": cid, "items": [{"item_id": i, "score": s} for i, s in items]}
        )

    async def coclicks(self, view, request, cluster_id):
        scope = _int(_id(cluster_id, "cluster_id"), "cluster_id", lo=-1, hi=2**31 - 1)
        n = _int(request.query.get("n"), "n", 50, 1, N_MAX)
        at = _int(request.query.get("at"), "at")
        keys = [_int(k, "key", lo=0) for k in request.query.getall("key", [])]
        keys += [item_key(_id(i, "item")) for i in request.query.getall("item", [])]
        if not 1 <= len(keys) <= 100:
            raise ValueError("give 1 to 100 items (item=ID or key=KEY)")
        rows, names = await self.server.coclick_rows(scope, keys, n, at)
        return view.json({
            "cluster_id": scope,
            "rows": [
                {"key": k, "item_id": self.worker.runtime.items.id_of_key(k), "mass": m,
                 "top": [[names.get(o), o, v] for o, v in top]}
                for k, m, top in rows
            ],
        })  # fmt: skip

    # -- admin (leader jobs) ----------------------------------------------------------

    async def admin_merge(self, view, request):
        forwarded = await self._on_leader(view, request, "/admin/merge")
        if forwarded is not None:
            return forwarded
        q = request.query
        report = await self.worker.jobs.merge(
            _int(q.get("min_size"), "min_size"), _flag(q.get("dry_run"), False)
        )
        return view.json(report)

    async def admin_recompute(self, view, request):
        forwarded = await self._on_leader(view, request, "/admin/recompute")
        if forwarded is not None:
            return forwarded
        q = request.query
        jobs = self.worker.jobs
        if q.get("why") == "drift":
            await jobs.recompute_on_drift()
            return view.json(jobs.as_dict())
        k_range = parse_k_range(q["k_range"]) if q.get("k_range") else None
        report = await jobs.recompute(
            k=_int(q.get("k"), "k", lo=1),
            k_range=k_range,
            sample=_int(q.get("sample"), "sample", lo=1),
            dry_run=_flag(q.get("dry_run"), False),
        )
        return view.json(report)


#: path, HTTP method, :class:`Routes` handler, query parameters it takes, admin only
ROUTES = (
    ("/stats", "get", "stats", ("digest",), False),
    ("/metrics", "get", "metrics", (), False),
    ("/healthz", "get", "healthz", (), False),
    ("/readyz", "get", "readyz", (), False),
    ("/debug/cf-applied", "get", "cf_applied", ("since",), False),
    ("/debug/clicks-fetched", "get", "clicks_fetched", ("since",), False),
    ("/users/{user_id}/recommendations", "get", "recommendations", ("n", "exclude_seen"), False),
    ("/clusters/{cluster_id}", "get", "cluster", ("n",), False),
    ("/clusters/{cluster_id}/top", "get", "top", ("n",), False),
    ("/clusters/{cluster_id}/coclicks", "get", "coclicks", ("n", "item", "key", "at"), False),
    ("/admin/merge", "post", "admin_merge", ("min_size", "dry_run"), True),
    ("/admin/recompute", "post", "admin_recompute", ("k", "k_range", "sample", "dry_run", "why"), True),
)  # fmt: skip


def register(app, worker) -> None:
    """Add every route of :data:`ROUTES` to the faust app."""
    routes = Routes(worker)
    for path, method, name, allowed, admin in ROUTES:
        run = routes.guarded(getattr(routes, name), frozenset(allowed), admin)
        app.page(path, name=name)(_view_class(method, run))


def _view_class(method: str, run) -> type[View]:
    """A faust View answering ``method`` with ``run(view, request, **path parameters)``."""

    async def handle(self, request, **kwargs):
        return await run(self, request, **kwargs)

    return type("Route", (View,), {method: handle})
