"""Broker loss: one log line per state change, and what the loops do about
offsets a broker no longer has.

While the broker is away every Kafka client of the worker retries and logs
each failed attempt (thousands of ERROR lines a minute). :class:`BrokerWatch`
asks the broker for metadata every second and logs one line when it stops
answering ("broker lost") and one when it answers again ("broker back");
:class:`LogGate`, on the root log handlers, drops the Kafka clients' warnings
and errors while the broker is lost and lets any other repeated warning
through at most once per ``interval_s`` (counting what it dropped).

Meanwhile the worker keeps serving from its local state: the stores stay
open (a partition is only released when a rebalance revokes it, which needs
the broker), and the registry keeps the ownership it last knew
(:attr:`stream.app.registry.RegistryView.frozen_at`).

>>> gate = LogGate(interval_s=60.0, clock=iter([0.0, 1.0, 61.0, 62.0, 63.0]).__next__)
>>> rec = lambda name, n=1: logging.LogRecord(name, logging.ERROR, "", 0, "x %s", (n,), None)
>>> [gate.filter(rec("stream.app.x")) for _ in range(3)], gate.dropped
([True, False, True], 1)
>>> gate.filter(rec("stream.app.x", 2)), gate.filter(rec("aiokafka.conn", 2))
(True, True)
>>> gate.lost = True
>>> gate.filter(rec("aiokafka.conn", 3)), gate.dropped
(False, 2)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import mode
from aiokafka.errors import OffsetOutOfRangeError

from stream.app.runtime import Runtime
from stream.io.broker import cluster_id_at
from stream.io.kafka import ensure_topics

logger = logging.getLogger(__name__)

# loggers of the Kafka clients (and of faust's own consumer) that retry and
# log every failed attempt while the broker is away
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust", "mode")


class LogGate(logging.Filter):
    """A filter for log handlers: warnings and errors of :data:`CLIENT_LOGGERS`
    are dropped while :attr:`lost`; a warning or error is dropped when the
    same one was let through less than ``interval_s`` ago (the same message
    template for the clients' loggers, the same text for the others). This
    module's own lines always pass."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.lost = False
        self.dropped = 0
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name == __name__:
            return True
        client = record.name.split(".", 1)[0] in CLIENT_LOGGERS
        if self.lost and client:
            self.dropped += 1
            return False
        # the clients' lines repeat with other arguments (node, attempt); ours
        # differ by partition or cluster, which must stay readable
        key = (record.name, str(record.msg) if client else record.getMessage())
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.dropped += 1
            return False
        if len(self._last) > 10_000:
            self._last.clear()  # bounded: message templates with data in them
        self._last[key] = now
        return True

    def install(self) -> None:
        """Put the gate on every handler of the root logger (once)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)


class BrokerWatch(mode.Service):
    """Probes the broker every ``interval_s``; logs its loss and its return
    once each; on its return re-creates the app's topics (a restarted
    embedded broker has none) and calls ``on_back``. The cluster id (read on
    every probe of a plaintext broker) tells a broker that came back empty:
    a changed id between two probes is a loss and a return at once."""

    def __init__(self, runtime: Runtime, registry=None, interval_s: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.runtime = runtime
        self.registry = registry
        self.interval_s = interval_s
        self.gate = LogGate()
        self.up = True
        self.losses = 0
        self.lost_at: float | None = None
        # awaited in order when the broker is back, before the loops resume
        # called with "the logs are new" (the broker came back as another cluster)
        self.on_back: list[Callable[[bool], Awaitable[None]]] = []
        self._resuming = False
        self.cluster_id: str | None = None

    async def _cluster_id(self) -> str | None:
        """The broker's cluster id (plaintext brokers only; None if unknown)."""
        settings = self.runtime.settings
        if settings.security_protocol != "PLAINTEXT":
            return None
        host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
        return await asyncio.get_running_loop().run_in_executor(
            None, cluster_id_at, host, int(port), 2.0
        )

    def pausing(self) -> bool:
        """Whether the batch loops should wait: the broker is lost, or back
        and not yet checked for lost logs."""
        return not self.up or self._resuming

    async def on_start(self) -> None:
        self.gate.install()

    def as_dict(self) -> dict:
        return {
            "up": self.up,
            "losses": self.losses,
            "lost_for_s": round(time.time() - self.lost_at, 1) if self.lost_at else 0.0,
            "log_lines_dropped": self.gate.dropped,
        }

    @mode.Service.task
    async def _watch(self) -> None:
        await self.runtime.items_ready.wait()
        self.gate.install()  # faust set its handlers up after on_start
        while not self.should_stop:
            await self.sleep(self.interval_s)
            ok = await self.runtime.producer.probe(timeout_s=max(2.0, 2 * self.interval_s))
            if ok and self.up:
                # a broker restarted between two probes is lost and back at once
                now = await self._cluster_id()
                if self.cluster_id is None:
                    self.cluster_id = now
                elif now is not None and now != self.cluster_id:
                    self._lost(f"{self.runtime.settings.bootstrap_servers} restarted")
            if ok and not self.up:
                await self._back()
            elif not ok and self.up:
                self._lost(f"{self.runtime.settings.bootstrap_servers} does not answer")

    def _lost(self, why: str) -> None:
        self.up, self.gate.lost = False, True
        self.losses += 1
        self.lost_at = time.time()
        if self.registry is not None:
            self.registry.frozen_at = self.lost_at
        logger.error(
            "broker lost: %s; serving from local state, retrying every %.0fs "
            "(Kafka client errors are not logged until it is back)",
            why, self.interval_s,
        )  # fmt: skip

    async def _back(self) -> None:
        away = time.time() - (self.lost_at or time.time())
        dropped = self.gate.dropped
        self._resuming = True
        self.up, self.gate.lost, self.lost_at = True, False, None
        try:
            await self._check_back(away, dropped)
        finally:
            self._resuming = False

    async def _check_back(self, away: float, dropped: int) -> None:
        if self.registry is not None:
            self.registry.frozen_at = None
        settings = self.runtime.settings
        try:
            created = await asyncio.get_running_loop().run_in_executor(
                None, ensure_topics, settings, self.runtime.topics.specs()
            )
        except Exception as exc:  # the topics may exist; the loops say if not
            created = []
            logger.warning("broker back, but its topics could not be checked: %r", exc)
        was, self.cluster_id = self.cluster_id, await self._cluster_id()
        for _ in range(4):  # a busy broker may miss one read: retry before deciding
            if self.cluster_id is not None or was is None:
                break
            await asyncio.sleep(0.5)
            self.cluster_id = await self._cluster_id()
        logs_new = was is not None and self.cluster_id is not None and was != self.cluster_id
        logger.warning(
            "broker back: %s answers again after %.1fs away (%d log lines dropped so far)%s",
            settings.bootstrap_servers, away, dropped,
            f"; it is a new cluster ({self.cluster_id}, was {was}) without the old logs "
            f"({len(created)} topics created again): the loops read the new logs from their start"
            if logs_new else "",
        )  # fmt: skip
        for callback in self.on_back:
            try:
                await callback(logs_new)
            except Exception:  # the loops resume anyway; the log says what went wrong
                logger.exception("checking the broker's logs after its return failed")


async def refresh_metadata(consumer, timeout_s: float = 5.0) -> None:
    """Have ``consumer`` read the topics' metadata now: a group consumer
    whose topics were missing learns of them otherwise only at its next
    periodic refresh (``metadata_max_age_ms``, minutes), and takes no
    partition until then. aiokafka has no public call for it."""
    client = getattr(consumer, "_client", None)
    if client is None:
        return
    try:
        await asyncio.wait_for(client.force_metadata_update(), timeout_s)
    except Exception as exc:  # the periodic refresh still comes
        logger.debug("metadata refresh failed: %r", exc)


async def log_start(consumer, tp, timeout_s: float = 5.0) -> int:
    """The first offset of ``tp``'s log; 0, where a new log starts, when the
    broker does not say within ``timeout_s`` (called when it came back empty)."""
    try:
        starts = await asyncio.wait_for(consumer.beginning_offsets([tp]), timeout_s)
    except Exception as exc:  # a new log starts at 0
        logger.debug("log start of %s unknown (%r): reading from 0", tp, exc)
        return 0
    return starts.get(tp, 0)


def resume_offset(asked: int, start: int, end: int) -> int:
    """Where a partition is read on after a fetch at ``asked`` fell outside its
    log ``[start, end)``.

    Below the start, retention deleted records never read: they are skipped.
    Past the end, the log was cut back (an unclean leader election on Apache
    Kafka) or the topic was made anew: records below ``end`` cannot be told
    apart from the ones already applied, and reading them again could count
    clicks twice (a cut-back log keeps everything retention kept), so it goes
    on from ``end``. A restarted embedded broker is not this case: its new logs
    are caught by the cluster id and read from their start (:func:`log_start`).

    >>> resume_offset(5, 10, 20), resume_offset(25, 10, 20), resume_offset(15, 10, 20)
    (10, 20, 15)
    """
    if asked < start:
        return start
    return end if asked > end else asked


async def resume_after_out_of_range(consumer, exc: OffsetOutOfRangeError, what: str) -> dict:
    """Where to consume again after ``consumer.getmany`` raised ``exc`` (the
    loops' consumers have no automatic reset, so they see it): for every
    partition named in ``exc``, :func:`resume_offset`. Logs one line per
    partition saying which case it is. Returns ``{TopicPartition: (asked
    offset, resume offset)}``."""
    asked = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    starts = await consumer.beginning_offsets(list(asked)) if asked else {}
    ends = await consumer.end_offsets(list(asked)) if asked else {}
    out = {}
    for tp, offset in asked.items():
        start = starts.get(tp, 0)
        end = max(ends.get(tp, start), start)
        resume = resume_offset(offset, start, end)
        if offset < start:
            logger.warning(
                "%s partition %d: offset %d is below the log start %d (retention): "
                "%d records were deleted unread and are skipped",
                what, tp.partition, offset, start, start - offset,
            )  # fmt: skip
        else:
            logger.error(
                "%s partition %d: offset %d lies past the log end %d: the log was cut back "
                "(an unclean leader election?) or made anew; reading on from %d (records "
                "below it written since the cut are not read, so none is counted twice)",
                what, tp.partition, offset, end, resume,
            )  # fmt: skip
        out[tp] = (offset, resume)
    return out
