"""Prometheus metrics of a worker (``GET /metrics``) and its periodic status line.

Most figures are read at scrape time from what the worker keeps anyway (the
counters of :class:`stream.app.runtime.Counters`, the stores, the centres,
the registry of workers): a scrape costs no work per click. The histograms
are observed once per batch, flush, applied CF fetch or job, never per click.
Each worker has its own :class:`prometheus_client.CollectorRegistry` (not the
process-global one) with the process collector (RSS, CPU) in it.

Names follow Prometheus conventions: prefix ``clusterstream_``, base units,
``_total`` on counters, and no user or item id in any label.

>>> m = Metrics()
>>> m.batch_duration.observe(0.004)
>>> b"clusterstream_batch_duration_seconds_count 1.0" in m.exposition()
True
>>> reason_code("missing field: user_id"), reason_code("invalid UTF-8")
('missing_field', 'invalid_utf_8')
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4"

# seconds; a batch is milliseconds, a flush up to seconds, a job up to minutes
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# short names of the app's topics in labels (full names carry the app id)
_SHORT_TOPICS = {"clicks-dlq": "dlq", "users-changelog": "changelog"}


def reason_code(reason: str) -> str:
    """A dead letter's reason as a short label value: the text before its
    first colon, lower case, runs of other characters as ``_``."""
    head = reason.split(":", 1)[0].strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", head).strip("_") or "other"


def count_reasons(reasons: dict[str, int]) -> dict[str, int]:
    """Dead-letter counts by reason -> by :func:`reason_code`.

    >>> count_reasons({"ts: must be an integer": 2, "ts: out of range": 1, "invalid JSON": 4})
    {'ts': 3, 'invalid_json': 4}
    """
    codes: dict[str, int] = {}
    for reason, n in reasons.items():
        code = reason_code(reason)
        codes[code] = codes.get(code, 0) + n
    return codes


def short_topic(app_id: str, topic: str) -> str:
    """``<app_id>-clicks-dlq`` -> ``dlq``; other topics of the app without the prefix."""
    prefix = f"{app_id}-"
    name = topic[len(prefix) :] if topic.startswith(prefix) else topic
    return _SHORT_TOPICS.get(name, name)


class Metrics:
    """A worker's registry and the histograms its loops observe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.batch_duration = Histogram(
            "clusterstream_batch_duration_seconds",
            "Wall time of one hot-path batch (decode, process, queue outputs).",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.click_to_cf = Histogram(
            "clusterstream_click_to_cf_seconds",
            "Event time of the newest click in an applied CF delta to the moment its "
            "cluster's table took it (one observation per applied batch).",
            buckets=CF_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.flush_duration = Histogram(
            "clusterstream_flush_duration_seconds",
            "Wall time of one flush: output acks, changelog, RocksDB write.",
            buckets=FLUSH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.job_duration = Histogram(
            "clusterstream_job_duration_seconds",
            "Wall time of one run of a leader job.",
            ["job"], buckets=JOB_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def observe_click_to_cf(self, ts_max_ms: int | None) -> None:
        """One observation for a CF delta whose newest click has event time ``ts_max_ms``."""
        if ts_max_ms is not None:
            self.click_to_cf.observe(max(time.time() - ts_max_ms / 1000.0, 0.0))

    def register_worker(self, worker) -> None:
        """Add the scrape-time figures of ``worker`` (:class:`stream.app.app.Worker`)."""
        self.registry.register(WorkerCollector(worker))

    def exposition(self) -> bytes:
        """The text exposition format of everything registered."""
        return generate_latest(self.registry)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _not_yet(worker, name: str) -> int:
    """A counter another branch adds (``duplicates_dropped``, ``users_expired``),
    on the runtime's counters or the hot path; 0 while neither has it."""
    value = getattr(worker.runtime.counters, name, None)
    if value is None:
        value = getattr(worker.hotpath, name, 0)
    return value if isinstance(value, int | float) else 0


def _rocksdb_property(store, name: str) -> int:
    try:
        return store.rocksdb_property(name)
    except Exception:  # a store closing under a rebalance: counted at the next scrape
        return 0


class WorkerCollector(Collector):
    """Reads the worker's counters and state at scrape time (on the event loop)."""

    def __init__(self, worker):
        self.worker = worker

    def describe(self) -> list[Metric]:
        return []  # no describe-time work; registered once per worker

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        yield from self._clicks(worker)
        yield from self._outputs(worker)
        yield from self._centres(worker)
        yield from self._assignments(worker)
        yield from self._state(worker)

    @staticmethod
    def _clicks(worker) -> Iterator[Metric]:
        """What became of the clicks read, and how far behind the loops are."""
        c = worker.runtime.counters
        hotpath, cf = worker.hotpath, worker.cf
        duplicates = _not_yet(worker, "duplicates_dropped")
        unknown = c.unknown_items

        events = CounterMetricFamily(
            "clusterstream_events_total",
            "Clicks read from the clicks topic by what became of them (applied: moved "
            "a user; unknown_item: valid, item without a vector; rejected: to the DLQ).",
            labels=["result"],
        )
        events.add_metric(["applied"], c.events_applied - unknown)
        events.add_metric(["rejected"], c.events_rejected)
        events.add_metric(["duplicate"], duplicates)
        events.add_metric(["unknown_item"], unknown)
        yield events

        dlq = CounterMetricFamily(
            "clusterstream_dlq_records_total",
            "Clicks sent to the dead-letter topic, by reason code.",
            labels=["reason"],
        )
        for code, n in sorted(count_reasons(c.dlq_reasons).items()):
            dlq.add_metric([code], n)
        yield dlq

        lag = GaugeMetricFamily(
            "clusterstream_consumer_lag_records",
            "Records between the high watermark and the next offset to apply.",
            labels=["topic", "partition"],
        )
        for p, owned in sorted(hotpath.owned.items()):
            lag.add_metric(["clicks", str(p)], max(owned.highwater - owned.applied, 0))
        for p, part in sorted(cf.owned.items()):
            lag.add_metric(["cf-deltas", str(p)], max(part.highwater - part.next_offset, 0))
        yield lag

    @staticmethod
    def _outputs(worker) -> Iterator[Metric]:
        """Flushes and the produce batches that failed."""
        runtime = worker.runtime
        settings, c = runtime.settings, runtime.counters
        yield _counter(
            "clusterstream_flush_rows_total",
            "Records a flush wrote to the users changelog and RocksDB.",
            c.flush_rows,
        )

        failures = CounterMetricFamily(
            "clusterstream_send_failures_total",
            "Produce batches that failed (or were not sent behind a failed one), by topic.",
            labels=["topic"],
        )
        by_topic: dict[str, int] = {}
        for producer in (runtime.producer, runtime.state_producer):
            for topic, n in producer.failures.items():
                short = short_topic(settings.app_id, topic)
                by_topic[short] = by_topic.get(short, 0) + n
        for topic in ("assignments", "cf-deltas", "changelog", "dlq"):
            by_topic.setdefault(topic, 0)
        for topic, n in sorted(by_topic.items()):
            failures.add_metric([topic], n)
        yield failures

    @staticmethod
    def _assignments(worker) -> Iterator[Metric]:
        """Membership changes, the drift watch and the leader's jobs."""
        c, hotpath = worker.runtime.counters, worker.hotpath
        yield _counter(
            "clusterstream_membership_changes_total",
            "Assignment records emitted (one per user whose memberships changed).",
            c.assignments_emitted,
        )
        distance = GaugeMetricFamily(
            "clusterstream_assignment_distance_mean",
            "Mean cosine distance of the last batch's users to their primary centre.",
        )
        if hotpath.drift.last_value is not None:
            distance.add_metric([], hotpath.drift.last_value)
        yield distance
        yield _counter(
            "clusterstream_drift_detections_total",
            "Times the drift watch fired on the assignment distance.",
            c.drift_detections,
        )

        runs = CounterMetricFamily(
            "clusterstream_job_runs_total",
            "Leader job runs by job and result (skipped: nothing to publish or a dry run).",
            labels=["job", "result"],
        )
        outcomes = worker.jobs.outcomes
        for job in ("bootstrap", "merge", "recompute"):
            for result in ("published", "skipped", "failed"):
                runs.add_metric([job, result], outcomes.get((job, result), 0))
        yield runs

    @staticmethod
    def _state(worker) -> Iterator[Metric]:
        """What the worker holds: CF entries, user rows, expiry, item vectors."""
        runtime = worker.runtime
        c, hotpath, cf = runtime.counters, worker.hotpath, worker.cf
        unknown = c.unknown_items
        yield _gauge(
            "clusterstream_cf_items",
            "(cluster, item) entries in the CF tables this worker owns.",
            sum(len(t) for t in cf.tables()),
        )
        yield _gauge(
            "clusterstream_coclick_entries",
            "(scope, item, other item) entries in the co-click tables this worker owns.",
            sum(len(p.coclick) for p in list(cf.owned.values())),
        )
        rows = GaugeMetricFamily(
            "clusterstream_user_rows",
            "User records of the owned partitions: cached in memory, and RocksDB's "
            "estimate of its keys.",
            labels=["where"],
        )
        stores = [o.store for o in list(hotpath.owned.values())]
        rows.add_metric(["memory"], sum(s.cached_rows for s in stores))
        rows.add_metric(
            ["rocksdb"], sum(_rocksdb_property(s, "rocksdb.estimate-num-keys") for s in stores)
        )
        yield rows
        yield _gauge(
            "clusterstream_rocksdb_sst_bytes",
            "Size of the SST files of the owned user stores.",
            sum(_rocksdb_property(s, "rocksdb.total-sst-files-size") for s in stores),
        )
        yield _counter(
            "clusterstream_users_expired_total",
            "Idle users removed after their TTL.",
            _not_yet(worker, "users_expired"),
        )
        yield _counter(
            "clusterstream_rebalances_total",
            "Partition assignments of the clicks consumer group seen by this worker.",
            c.rebalances,
        )
        coverage = GaugeMetricFamily(
            "clusterstream_item_vector_coverage",
            "Share (0..1) of catalogue items with a vector, and of valid clicks on them.",
            labels=["what"],
        )
        items = runtime.items
        if len(items):
            coverage.add_metric(["items"], items.n_with_vector / len(items))
        if c.events_applied:
            coverage.add_metric(["clicks"], 1.0 - unknown / c.events_applied)
        yield coverage

    @staticmethod
    def _centres(worker) -> Iterator[Metric]:
        centres = worker.runtime.centres
        version = GaugeMetricFamily(
            "clusterstream_centres_version", "Version of the installed centre set."
        )
        age = GaugeMetricFamily(
            "clusterstream_centres_age_seconds", "Time since the installed centre set was made."
        )
        clusters = GaugeMetricFamily(
            "clusterstream_clusters", "Cluster ids of the installed set.", labels=["state"]
        )
        members = GaugeMetricFamily(
            "clusterstream_cluster_members",
            "Members of the live clusters (all workers, from the registry).",
            labels=["stat"],
        )
        if centres is not None:
            version.add_metric([], centres.version)
            age.add_metric([], max(time.time() - centres.created_at_ms / 1000.0, 0.0))
            clusters.add_metric(["live"], centres.k)
            clusters.add_metric(["retired"], len(centres.aliases))
            sizes = worker.registry.sizes(dict(centres.aliases))
            counts = np.array([sizes.get(cid, 0) for cid in centres.ids.tolist()])
            if len(counts):
                members.add_metric(["min"], float(counts.min()))
                members.add_metric(["median"], float(np.median(counts)))
                members.add_metric(["max"], float(counts.max()))
        yield from (version, age, clusters, members)


class StatusLog:
    """One INFO line every ``status_log_interval_s`` of what the worker does,
    and a warning, once each, when the bootstrap stalls (no centre set two
    intervals, at most 60 s, after the first partition assignment) or most
    clicks of an interval hit items without a vector."""

    MIN_CLICKS = 100  # clicks in an interval before their item share means anything

    def __init__(self, worker):
        self.worker = worker
        self.warned_stall = False
        self.warned_items = False
        self._last = (time.monotonic(), 0, 0)  # time, events applied, unknown items
        # no centre set this long after the loop started: say why
        self.stall_s = min(60.0, 2 * worker.runtime.settings.status_log_interval_s)

    async def run(self, stopping) -> None:
        """Log until ``stopping()`` is true (a coroutine of the worker's service)."""
        interval = self.worker.runtime.settings.status_log_interval_s
        while not stopping():
            await asyncio.sleep(min(interval, 5.0) / 2)
            self.check_stall()
            if time.monotonic() - self._last[0] >= interval:
                self.tick()

    def tick(self) -> None:
        worker = self.worker
        runtime = worker.runtime
        c = runtime.counters
        now = time.monotonic()
        then, applied, unknown = self._last
        self._last = (now, c.events_applied, c.unknown_items)
        clicks = c.events_applied - applied
        centres = runtime.centres
        logger.info(
            "status: %.0f clicks/s, lag %d, %d users, %d clusters, centres version %s, "
            "%d partitions",
            clicks / max(now - then, 1e-9), worker.hotpath.lag(), worker.hotpath.users(),
            centres.k if centres is not None else 0,
            centres.version if centres is not None else None, len(worker.hotpath.owned),
        )  # fmt: skip
        if runtime.learner is not None:
            got = runtime.learner.stats(runtime.items)
            logger.info(
                "item vectors: %d given, %d learnt from clicks, %d seed only, %d none",
                got["given"], got["learnt"], got["seed_only"], got["none"],
            )  # fmt: skip
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("status: clicks partitions %s", worker.hotpath.positions())
        missed = c.unknown_items - unknown
        if self.warned_items or clicks < self.MIN_CLICKS:
            return
        items = runtime.items
        if missed * 2 > clicks:
            self.warned_items = True
            logger.warning(
                "%d of the last %d clicks hit items without a vector (%d of %d catalogue "
                "items have one): are the item vectors or metadata on the items topic?",
                missed, clicks, items.n_with_vector, len(items),
            )  # fmt: skip
        elif not items.any_given and len(items):
            # seeds keep such a log running, but an operator may have forgotten the items
            self.warned_items = True
            logger.warning(
                "no item has a given vector: the last %d clicks hit items without a vector "
                "(%d catalogue items run on seeds and vectors learnt from the clicks): are "
                "the item vectors or metadata on the items topic?",
                clicks, len(items),
            )  # fmt: skip

    def check_stall(self) -> None:
        worker = self.worker
        runtime = worker.runtime
        hotpath = worker.hotpath
        if self.warned_stall or runtime.centres is not None or hotpath.ready_at is None:
            return
        if time.time() - hotpath.ready_at < self.stall_s:
            return
        self.warned_stall = True
        c = runtime.counters
        logger.warning(
            "bootstrap stalled: no centre set %.0fs after start; this worker holds %d users "
            "and the leader needs %d users with a vector (bootstrap_users) in its own "
            "partitions; %d of %d clicks so far hit items without a vector%s",
            time.time() - hotpath.ready_at, hotpath.users(),
            runtime.settings.bootstrap_users, c.unknown_items, c.events_applied,
            "" if runtime.is_leader() else " (this worker is not the leader)",
        )  # fmt: skip
