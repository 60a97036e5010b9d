"""The faust app: the runtime around the batch loops.

faust provides the worker's service tree, the web server, timers and leader
election; the high-volume topics (clicks, cf-deltas) are read by batch loops
(:mod:`stream.app.hotpath`, :mod:`stream.app.cfowner`) and the broadcast
topics by group-less feeds (:mod:`stream.app.feeds`).
"""

from __future__ import annotations

import logging

import faust
import mode

from stream.app import jobs, views
from stream.app.cfowner import CFOwner
from stream.app.feeds import CentresFeed, ItemsFeed
from stream.app.hotpath import HotPath
from stream.app.runtime import Runtime
from stream.io.kafka import ensure_topics
from stream.settings import Settings

logger = logging.getLogger(__name__)


def _credentials(settings: Settings):
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
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
        self.items_feed = ItemsFeed(runtime)
        self.centres_feed = CentresFeed(runtime)
        self.hotpath = HotPath(runtime)
        self.cf = CFOwner(runtime)

    def on_init_dependencies(self):
        return [self.items_feed, self.centres_feed, self.hotpath, self.cf]

    async def on_start(self) -> None:
        await self.runtime.producer.start()

    async def on_stop(self) -> None:
        await self.runtime.producer.stop()

    @mode.Service.task
    async def _gate(self) -> None:
        await self.items_feed.ready.wait()
        await self.centres_feed.ready.wait()
        self.runtime.items_ready.set()
        logger.info(
            "feeds ready: %d items, centres version %s",
            len(self.runtime.items),
            self.runtime.centres.version if self.runtime.centres else None,
        )


def create_app(settings: Settings) -> tuple[faust.App, Worker]:
    """The faust app of a worker, and the service that does the work."""
    runtime = Runtime.create(settings)
    (settings.data_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    ensure_topics(settings, runtime.topics.specs())
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
    )
    runtime.is_leader = app.is_leader
    worker = Worker(runtime)

    @app.task
    async def _start_worker() -> None:
        await app.add_runtime_dependency(worker)

    @app.timer(1.0)
    async def _bootstrap() -> None:
        if worker.hotpath.running.is_set():
            await jobs.bootstrap_if_needed(runtime, worker.hotpath)

    @app.page("/stats")
    async def _stats(web, request):
        with_digest = request.query.get("digest", "1") not in ("0", "false", "no")
        return web.json(await views.stats(runtime, worker.hotpath, worker.cf, with_digest))

    @app.page("/debug/cf-applied")
    async def _cf_applied(web, request):
        """(source partition, last source offset, wall time) of applied CF deltas
        (empty unless trace_latency is on)."""
        return web.json({"applied": list(worker.cf.applied_trace)})

    return app, worker


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run a worker until SIGINT/SIGTERM (blocks)."""
    app, _ = create_app(settings)
    app.finalize()
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
