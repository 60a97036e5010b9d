"""The faust app: the runtime around the batch loops.

faust provides the worker's service tree, the web server, timers and leader
election; the high-volume topics (clicks, cf-deltas) are read by batch loops
(:mod:`stream.app.hotpath`, :mod:`stream.app.cfowner`) and the broadcast
topics by group-less feeds (:mod:`stream.app.feeds`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections import deque
from zoneinfo import ZoneInfo

import faust
import mode
from threadpoolctl import threadpool_limits

from stream.app import dashboard, views
from stream.app.brokerwatch import BrokerWatch, refresh_metadata
from stream.app.cfowner import CFOwner
from stream.app.feeds import CentresFeed, ItemsFeed, LearntFeed, RegistryFeed
from stream.app.hotpath import HotPath
from stream.app.jobs import JobError, Jobs
from stream.app.memory import limit_arenas, set_mmap_threshold
from stream.app.metrics import StatusLog
from stream.app.registry import RegistryView, new_worker_id
from stream.app.runtime import Runtime
from stream.app.serving import Server
from stream.io.kafka import ensure_topics, no_topic_auto_creation
from stream.settings import Settings
from stream.wire.workers import encode_worker

logger = logging.getLogger(__name__)


def _credentials(settings: Settings):
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_secret(),
            mechanism=settings.sasl_mechanism,
            ssl_context=_ssl_context(settings)
            if settings.security_protocol == "SASL_SSL"
            else None,
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def _ssl_context(settings: Settings):
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(
        cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
    )


class Worker(mode.Service):
    """Starts the feeds, waits until items and centres are read, then the loops."""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(**kwargs)
        self.runtime = runtime
        self.worker_id = new_worker_id()
        self.registry = RegistryView()
        self.items_feed = ItemsFeed(runtime)
        self.centres_feed = CentresFeed(runtime)
        self.registry_feed = RegistryFeed(runtime, self.registry)
        # the other partitions' learnt item sums, when items learn vectors
        self.learnt_feed = LearntFeed(runtime) if runtime.learnt_parts is not None else None
        self.cf = CFOwner(runtime)
        self.hotpath = HotPath(
            runtime,
            cf_local=self.cf.apply_local if runtime.settings.cf_apply_local else None,
            cf_rebase=self.cf.source_rebased,
        )
        self.jobs = Jobs(runtime, self.hotpath, self.registry)
        self.server = Server(runtime, self.hotpath, self.cf, self.registry)
        self.hotpath.on_drift = self.drift_detected
        runtime.metrics.register_worker(self)
        self.status_log = StatusLog(self)
        self.broker = BrokerWatch(runtime, self.registry)
        self.hotpath.paused = self.cf.paused = self.broker.pausing
        self.broker.on_back.append(self._broker_back)
        # the process exits this long after the state is saved, faust stopped or not
        self.stop_grace_s: float | None = None  # set by run_worker
        # and this long after the stop began, saved or not (settings.stop_timeout_s)
        self.stop_timeout_s: float | None = None  # set by run_worker

    def on_init_dependencies(self):
        return [*self._feeds(), self.hotpath, self.cf, self.broker]

    def _feeds(self) -> list:
        feeds = [self.items_feed, self.centres_feed, self.registry_feed]
        return feeds if self.learnt_feed is None else [*feeds, self.learnt_feed]

    async def on_start(self) -> None:
        await self.runtime.producer.start()
        await self.runtime.state_producer.start()

    async def on_stop(self) -> None:
        # a final flush waits for acks a broker that went away never sends
        if self.stop_timeout_s is not None:
            _exit_if_still_running(
                self.stop_timeout_s,
                "the worker's state was not saved within %.0fs of the stop (is the broker "
                "away?): exiting; the clicks since the last flush are applied again at the "
                "next start",
                code=1,
            )

    async def on_shutdown(self) -> None:
        # after the child services stopped: they may still produce while stopping
        await self.server.close()
        await self.runtime.producer.stop()
        await self.runtime.state_producer.stop()
        if self.stop_grace_s is not None:
            _exit_if_still_running(self.stop_grace_s)

    @mode.Service.task
    async def _gate(self) -> None:
        await self.items_feed.ready.wait()
        await self.centres_feed.ready.wait()
        if self.learnt_feed is not None:  # every item learnt so far, before the first click
            await self.learnt_feed.ready.wait()
        self.runtime.items_ready.set()
        logger.info(
            "feeds ready: %d items, centres version %s",
            len(self.runtime.items),
            self.runtime.centres.version if self.runtime.centres else None,
        )

    async def _broker_back(self, logs_new: bool) -> None:
        """Before the loops resume: a broker that lost its logs is read from their start."""
        for consumer in (self.hotpath.consumer, self.cf.consumer):
            # the topics it re-created (a group-less feed finds them by itself)
            await refresh_metadata(consumer)
        if logs_new:
            for feed in self._feeds():
                feed.rewind()
            for loop in (self.hotpath, self.cf):
                try:
                    await loop.logs_new()
                except Exception:  # the other loop must not stay on its old offsets
                    logger.exception("%s: reading the new logs from their start failed", loop)

    def registry_record(self) -> dict:
        runtime = self.runtime
        return {
            "worker_id": self.worker_id,
            "url": runtime.settings.url(),
            "leader": runtime.is_leader(),
            "clicks_partitions": sorted(self.hotpath.owned),
            "cf_partitions": sorted(self.cf.owned),
            "sizes": {
                str(p): {str(c): n for c, n in o.store.current_sizes.items()}
                for p, o in self.hotpath.owned.items()
            },
            "users": self.hotpath.users(),
            "ts": time.time(),
        }

    @mode.Service.task
    async def _publish_registry(self) -> None:
        """Tell the other workers what this one owns, every ``registry_interval_s``."""
        runtime = self.runtime
        await runtime.items_ready.wait()
        while not self.should_stop:
            record = self.registry_record()
            self.registry.update(record)
            try:
                await runtime.producer.send_one(
                    runtime.topics.workers,
                    self.worker_id.encode(),
                    encode_worker(record),
                    partition=0,
                )
            except Exception:  # a missed beat is retried at the next one
                logger.exception("could not publish the registry record")
            await self.sleep(runtime.settings.registry_interval_s)

    @mode.Service.task
    async def _status(self) -> None:
        await self.status_log.run(lambda: self.should_stop)

    @mode.Service.task
    async def _watch_loop(self) -> None:
        """Event-loop stalls (a long batch, a flush, a GC pass) show up as lateness
        of a 10 ms sleep; /stats reports the worst of the last minute."""
        lags: deque[tuple[float, float]] = deque()
        while not self.should_stop:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            now = time.monotonic()
            lags.append((now, now - before - 0.01))
            while lags and now - lags[0][0] > 60:
                lags.popleft()
            self.runtime.loop_lag_max_s = max(lag for _, lag in lags)

    async def drift_detected(self) -> None:
        """The drift watch fired: the leader may recompute (it keeps the rate limit)."""
        if self.runtime.is_leader():
            await self.jobs.recompute_on_drift()
            return
        url = self.registry.leader_url()
        if url is not None and self.runtime.settings.recompute_on_drift:
            try:
                status, body = await self.server.post_json(
                    f"{url}/admin/recompute", {"why": "drift"}
                )
            except Exception:
                logger.exception("could not ask the leader at %s for a recompute", url)
                return
            if status != 200:  # 403: no admin_token configured on the workers
                logger.warning(
                    "the leader at %s refused a drift recompute (%d): %s",
                    url, status, body.get("error"),
                )  # fmt: skip


def _exit_if_still_running(
    grace_s: float,
    message: str = "faust did not stop within %.0fs after the worker's state was saved: exiting",
    code: int = 0,
) -> None:
    """Exit the process with ``code`` ``grace_s`` from now if it is still
    running, logging ``message`` (``%s`` the seconds). Used twice: faust's own
    consumer can hang in its stop while a group rejoin is under way (a broker
    just back) after the state is saved; and a final flush can wait forever
    for a broker that is gone (exiting then is as safe as a crash)."""

    def exit_now() -> None:
        logger.warning(message, grace_s)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(grace_s, exit_now)
    timer.daemon = True  # does not keep a process that stops by itself
    timer.start()


def create_app(settings: Settings) -> tuple[faust.App, Worker]:
    """The faust app of a worker, and the service that does the work."""
    runtime = Runtime.create(settings)
    (settings.data_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    ensure_topics(settings, runtime.topics.specs())
    # a broker back empty gets them from BrokerWatch, with their partition counts
    no_topic_auto_creation(spec.name for spec in runtime.topics.specs())
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        datadir=str(settings.data_dir / settings.app_id / "faust"),
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        timezone=ZoneInfo(settings.recompute_timezone),
    )
    runtime.is_leader = app.is_leader
    worker = Worker(runtime)

    @app.task
    async def _start_worker() -> None:
        await app.add_runtime_dependency(worker)

    @app.timer(1.0)
    async def _bootstrap() -> None:
        if worker.hotpath.running.is_set():
            await worker.jobs.bootstrap_if_needed()

    @app.timer(settings.merge_interval_s, on_leader=True)
    async def _merge() -> None:
        if runtime.centres is not None and not worker.jobs.lock.locked():
            report = await worker.jobs.merge()
            if report["steps"]:
                logger.info("merge: %s", report)

    async def _recompute() -> None:
        try:
            await worker.jobs.recompute(why="schedule")
        except JobError as exc:
            logger.warning("scheduled recompute skipped: %s", exc)

    if settings.recompute_cron != "off":
        app.crontab(
            settings.recompute_cron, on_leader=True, timezone=ZoneInfo(settings.recompute_timezone)
        )(_recompute)

    views.register(app, worker)
    dashboard.register(app, worker)
    return app, worker


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run a worker until SIGINT/SIGTERM (blocks).

    One worker process per core: BLAS runs single-threaded (its helper
    threads otherwise spin on the other core), and the garbage collector
    scans far less often (the hot path allocates many short-lived objects,
    none in cycles)."""
    threadpool_limits(1, user_api="blas")
    gc.set_threshold(50_000, 20, 100)
    # before the worker's threads start; False: glibc refused the value
    for name, set_option in (
        ("malloc_arena_max", limit_arenas), ("malloc_mmap_threshold_kb", set_mmap_threshold),
    ):  # fmt: skip
        if set_option(getattr(settings, name)) is False:
            logger.warning("malloc refused %s=%d", name, getattr(settings, name))
    app, worker = create_app(settings)
    worker.stop_grace_s = 10.0
    worker.stop_timeout_s = settings.stop_timeout_s
    app.finalize()
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
