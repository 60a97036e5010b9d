"""The live dashboard of the whole app.

| route | what |
|---|---|
| ``GET /dashboard`` | the page (HTML; its script draws inline SVG charts, no CDN) |
| ``GET /dashboard/static/{name}`` | the page's script and style sheet |
| ``GET /dashboard/series`` | this worker's ring buffer of samples, events, DLQ counts, health |
| ``GET /dashboard/data`` | every live worker's series merged, sizes, top items, who answered |

Every worker samples its own counters every ``SAMPLE_S`` seconds into a ring
buffer (:class:`Sampler`): figures it already keeps for ``/stats``, never the
state digest and never a flush, so an open dashboard does not change the
worker's rhythm. The page asks one worker for ``/dashboard/data``; that worker
asks every live worker of the ``workers`` registry for its series (a short
timeout each), merges them by sample time, and marks a worker that did not
answer.

>>> merge_series([[{"t": 10.1, "applied_per_s": 5.0, "lag": 1, "batch_ms": 2.0,
...                 "distance": 0.2}],
...               [{"t": 11.2, "applied_per_s": 7.0, "lag": 3, "batch_ms": 4.0,
...                 "distance": 0.4}]], 2.0)
[{'t': 10.0, 'applied_per_s': 12.0, 'lag': 4, 'batch_ms': 4.0, 'distance': 0.3...}]
>>> size_histogram({1: 3, 2: 5, 3: 40}, bins=4)
[{'lo': 3, 'hi': 12, 'clusters': 2}, {'lo': 13, 'hi': 22, 'clusters': 0}, \
{'lo': 23, 'hi': 32, 'clusters': 0}, {'lo': 33, 'hi': 40, 'clusters': 1}]
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from importlib import resources

import aiohttp
from faust.web import View

from stream.core.centres import CentreSet

logger = logging.getLogger(__name__)

SAMPLE_S = 2.0
KEEP = 300  # samples per worker: ten minutes at SAMPLE_S
FAN_OUT_TIMEOUT_S = 1.5
TOP_CLUSTERS = 5
TOP_ITEMS = 5
STATIC = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}

# how each figure of a sample combines over workers at the same time
RATES = ("applied_per_s", "rejected_per_s", "churn_per_s")
SUMMED = (*RATES, "lag", "cf_lag", "users")
HIGHEST = ("batch_ms", "freshness_s", "version")
AVERAGED = ("distance",)


class Sampler:
    """A ring buffer of one worker's figures, one sample every ``SAMPLE_S``.

    A sample: ``t`` (epoch s), ``dt`` (s since the sample before), ``applied_per_s`` and ``rejected_per_s``
    (clicks per second since the sample before), ``lag`` and ``cf_lag``
    (records), ``batch_ms`` (mean batch time since the sample before, None
    without batches), ``freshness_s`` (age of the newest click in this
    worker's CF tables when new clicks reached them since the sample before,
    else None), ``churn_per_s`` (membership changes per second), ``distance``
    (mean assignment distance of the last batch), ``version`` (centres),
    ``users``. Events: centre sets installed (``kind`` is their reason) and
    drift detections."""

    def __init__(self, worker, keep: int = KEEP, now: float | None = None):
        self.worker = worker
        self.samples: deque[dict] = deque(maxlen=keep)
        self.events: deque[dict] = deque(maxlen=keep)
        # the baseline is the start: faust starts timers only after its first
        # rebalance, by when the batch loop may have applied many clicks
        self._last = self._raw(time.time() if now is None else now)
        worker.runtime.centres_listeners.append(self.centres_installed)

    def centres_installed(self, centres: CentreSet) -> None:
        at = centres.created_at_ms / 1000 if centres.created_at_ms > 0 else time.time()
        self.events.append({"t": at, "kind": centres.reason, "version": centres.version})

    def _raw(self, now: float) -> dict:
        c = self.worker.runtime.counters
        clocks = [t.clock_ms for t in self.worker.cf.tables() if t.clock_ms is not None]
        return {
            "t": now,
            "applied": c.events_applied,
            "rejected": c.events_rejected,
            "assignments": c.assignments_emitted,
            "batches": c.batches,
            "batch_seconds": c.batch_seconds,
            "drift": c.drift_detections,
            "cf_clock_ms": max(clocks) if clocks else None,
        }

    def sample(self, now: float | None = None) -> dict:
        """Take a sample: figures now, rates since the sample before (or the start)."""
        now = time.time() if now is None else now
        raw, last = self._raw(now), self._last
        self._last = raw
        dt = max(now - last["t"], 1e-6)
        hotpath, runtime = self.worker.hotpath, self.worker.runtime
        batches = raw["batches"] - last["batches"]
        clock = raw["cf_clock_ms"]
        fresh = clock is not None and clock != last["cf_clock_ms"]
        if raw["drift"] > last["drift"]:
            self.events.append({"t": now, "kind": "drift", "worker_id": self.worker.worker_id})
        centres = runtime.centres
        distance = hotpath.drift.last_value
        s = {
            "t": round(now, 3),
            "dt": round(dt, 3),
            "applied_per_s": round((raw["applied"] - last["applied"]) / dt, 2),
            "rejected_per_s": round((raw["rejected"] - last["rejected"]) / dt, 2),
            "lag": hotpath.lag(),
            "cf_lag": self.worker.cf.lag(),
            "batch_ms": round(1000 * (raw["batch_seconds"] - last["batch_seconds"]) / batches, 3)
            if batches
            else None,
            "freshness_s": round(max(now - clock / 1000, 0.0), 3) if fresh else None,
            "churn_per_s": round((raw["assignments"] - last["assignments"]) / dt, 2),
            "distance": None if distance is None else round(distance, 5),
            "version": centres.version if centres is not None else None,
            "users": hotpath.users(),
        }
        self.samples.append(s)
        return s

    def series(self) -> dict:
        """This worker's samples, events and health (``GET /dashboard/series``)."""
        worker, runtime = self.worker, self.worker.runtime
        c = runtime.counters
        return {
            "worker_id": worker.worker_id,
            "url": runtime.settings.url(),
            "leader": runtime.is_leader(),
            "ready": worker.hotpath.ready(),
            "partitions": sorted(worker.hotpath.owned),
            "cf_partitions": sorted(worker.cf.owned),
            "lag": worker.hotpath.lag(),
            "users": worker.hotpath.users(),
            "events_applied": c.events_applied,
            "events_rejected": c.events_rejected,
            "dlq": dict(c.dlq_reasons),
            "uptime_s": round(time.time() - runtime.started_at, 1),
            "loop_lag_max_ms": round(1000 * runtime.loop_lag_max_s, 1),
            "sample_s": SAMPLE_S,
            "samples": list(self.samples),
            "events": list(self.events),
        }


def merge_series(series: list[list[dict]], sample_s: float) -> list[dict]:
    """One series from several workers' samples (one list per worker), a point
    per ``sample_s`` slot. A worker whose timer put two samples in one slot
    counts once there: its rates weighted by their ``dt``, its newest lag and
    version, its worst batch time. Over workers, rates, lags and users are
    summed, batch time, freshness and version maxed, distance averaged; None
    where no worker had a value."""
    slots: dict[int, list[dict]] = {}
    for samples in series:
        mine: dict[int, list[dict]] = {}
        for s in samples:
            mine.setdefault(int(s["t"] // sample_s), []).append(s)
        for slot, group in mine.items():
            slots.setdefault(slot, []).append(_one_worker(group))
    merged = []
    for slot in sorted(slots):
        group = slots[slot]
        out: dict = {"t": slot * sample_s}
        for name in SUMMED + HIGHEST + AVERAGED:
            values = [s[name] for s in group if s.get(name) is not None]
            if name not in group[0] and not values:
                continue
            if not values:
                out[name] = None
            elif name in SUMMED:
                out[name] = round(sum(values), 3)
            elif name in HIGHEST:
                out[name] = max(values)
            else:
                out[name] = round(sum(values) / len(values), 5)
        merged.append(out)
    return merged


def _one_worker(group: list[dict]) -> dict:
    """One worker's samples of one slot as one sample (see :func:`merge_series`)."""
    if len(group) == 1:
        return group[0]
    out = dict(group[-1])
    weights = [max(s.get("dt", 1.0), 1e-6) for s in group]
    for name in RATES:
        if name in out:
            out[name] = sum(s[name] * w for s, w in zip(group, weights, strict=True)) / sum(weights)
    for name in HIGHEST:
        values = [s[name] for s in group if s.get(name) is not None]
        if values:
            out[name] = max(values)
    return out


def size_histogram(sizes: dict[int, int], bins: int = 12) -> list[dict]:
    """Clusters per member-count range: ``bins`` equal ranges from the smallest
    to the largest live cluster (fewer when the sizes span fewer values)."""
    if not sizes:
        return []
    lo, hi = min(sizes.values()), max(sizes.values())
    width = max(math.ceil((hi - lo + 1) / bins), 1)
    counts = [0] * math.ceil((hi - lo + 1) / width)
    for n in sizes.values():
        counts[(n - lo) // width] += 1
    return [
        {"lo": lo + i * width, "hi": min(lo + (i + 1) * width - 1, hi), "clusters": k}
        for i, k in enumerate(counts)
    ]


def _merge_dlq(answers: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for a in answers:
        for reason, n in a.get("dlq", {}).items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _merge_events(answers: list[dict]) -> list[dict]:
    """Centre sets once per version (every worker installs each), drift per worker."""
    seen: dict[tuple, dict] = {}
    for a in answers:
        for e in a.get("events", []):
            key = (
                e["kind"],
                e.get("version"),
                e.get("worker_id"),
                None if "version" in e else e["t"],
            )
            seen.setdefault(key, e)
    return sorted(seen.values(), key=lambda e: e["t"])


class Dashboard:
    """What ``/dashboard/data`` gathers: the fan-out to every live worker and the merge."""

    def __init__(self, worker, sampler: Sampler):
        self.worker = worker
        self.sampler = sampler

    async def _ask(self, record: dict) -> dict:
        """One worker's series, or why it did not answer."""
        if record["worker_id"] == self.worker.worker_id:
            return {**self.sampler.series(), "answered": True}
        session = await self.worker.server.session()
        try:
            async with session.get(
                f"{record['url']}/dashboard/series",
                timeout=aiohttp.ClientTimeout(total=FAN_OUT_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                return {**(await resp.json()), "answered": True}
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            logger.debug("dashboard: %s did not answer: %r", record["url"], exc)
            return {
                "answered": False,
                "error": (type(exc).__name__ + (f": {exc}" if str(exc) else ""))[:100],
            }

    async def _top(self, sizes: dict[int, int]) -> list[dict]:
        largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CLUSTERS]
        out = []
        for cid, members in largest:
            entry = {"cluster_id": cid, "members": members, "items": []}
            try:
                items = await asyncio.wait_for(
                    self.worker.server.top_items(cid, TOP_ITEMS), FAN_OUT_TIMEOUT_S
                )
                entry["items"] = [{"item_id": i, "score": s} for i, s in items]
            except Exception as exc:  # an owner away or slow: the rest still shows
                logger.debug("dashboard: top items of cluster %s: %r", cid, exc)
                entry["error"] = type(exc).__name__
            out.append(entry)
        return out

    async def data(self) -> dict:
        worker, runtime = self.worker, self.worker.runtime
        now = time.time()
        records = {r["worker_id"]: r for r in worker.registry.live(now)}
        records.setdefault(worker.worker_id, worker.registry_record())
        ids = sorted(records)
        answers = await asyncio.gather(*(self._ask(records[w]) for w in ids))
        workers = []
        for wid, answer in zip(ids, answers, strict=True):
            rec = records[wid]
            row = {
                "worker_id": wid,
                "url": rec["url"],
                "leader": rec.get("leader", False),
                "partitions": rec.get("clicks_partitions", []),
                "cf_partitions": rec.get("cf_partitions", []),
                "beat_age_s": round(now - rec["ts"], 1),
                "answered": answer["answered"],
            }
            if answer["answered"]:
                for k in ("ready", "lag", "users", "uptime_s", "loop_lag_max_ms", "partitions"):
                    row[k] = answer[k]
            else:
                row["error"] = answer["error"]
            workers.append(row)
        answered = [a for a in answers if a["answered"]]
        centres = runtime.centres
        aliases = dict(centres.aliases) if centres is not None else {}
        sizes = worker.registry.sizes(aliases, now)
        return {
            "app_id": runtime.settings.app_id,
            "served_by": worker.worker_id,
            "now": round(now, 3),
            "sample_s": SAMPLE_S,
            "series": merge_series([a["samples"] for a in answered], SAMPLE_S),
            "events": _merge_events(answered),
            "dlq": _merge_dlq(answered),
            "workers": workers,
            "centres": None
            if centres is None
            else {
                "version": centres.version,
                "reason": centres.reason,
                "k": centres.k,
                "retired": len(aliases),
            },
            "sizes": size_histogram(sizes),
            "clusters_with_members": len(sizes),
            "top": await self._top(sizes),
        }


def _asset(name: str) -> str:
    return (resources.files("stream.app") / "static" / name).read_text(encoding="utf-8")


def _no_params(view: View, request):
    """None, or the 400 answer to a query parameter these routes do not take."""
    if request.query:
        name = next(iter(request.query))
        return view.json({"error": f"unknown parameter {name!r}"}, status=400)
    return None


def register(app, worker) -> Sampler:
    """Add the dashboard's routes and its sampling timer to the faust app."""
    sampler = Sampler(worker)
    dashboard = Dashboard(worker, sampler)
    page = _asset("dashboard.html")
    assets = {name: (_asset(name), kind) for name, kind in STATIC.items()}

    @app.timer(SAMPLE_S)
    async def _dashboard_sample() -> None:
        sampler.sample()

    @app.page("/dashboard")
    class Page(View):
        async def get(self, request):
            return _no_params(self, request) or self.html(page)

    @app.page("/dashboard/static/{name}")
    class Static(View):
        async def get(self, request, name):
            if name not in assets:
                return self.json({"error": f"no asset {name!r}"}, status=404)
            body, kind = assets[name]
            return self.bytes(body.encode(), content_type=kind)

    @app.page("/dashboard/series")
    class Series(View):
        async def get(self, request):
            return _no_params(self, request) or self.json(sampler.series())

    @app.page("/dashboard/data")
    class Data(View):
        async def get(self, request):
            return _no_params(self, request) or self.json(await dashboard.data())

    return sampler
