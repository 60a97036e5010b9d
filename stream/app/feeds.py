"""Broadcast feeds: every worker reads ALL of the items, centres, learnt-items
and workers topics.

These topics are small and compacted, and every worker needs all of them (any
click may hit any item; every worker assigns to the same centres), so they
are read with a group-less consumer assigned every partition from the
beginning, not through a consumer group.

At start-up each feed reads to the end of its topic before the hot path
begins (``ready``), so no click of a known item counts as unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.app import learnt
from stream.app.registry import RegistryView
from stream.app.runtime import Runtime
from stream.errors import BadRecord
from stream.io.embedded_broker_workarounds import EMBEDDED_FETCH_MAX_WAIT_MS, high_watermarks_async
from stream.io.kafka import aiokafka_config
from stream.wire.centres import decode_centres
from stream.wire.dlq import dlq_records
from stream.wire.items import decode_item
from stream.wire.workers import decode_worker

logger = logging.getLogger(__name__)


class BroadcastFeed(mode.Service):
    """Reads every partition of one topic from the beginning, forever."""

    topic: str = ""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(**kwargs)
        self.runtime = runtime
        self.ready = asyncio.Event()
        self.records_read = 0
        self._rewind = False

    def rewind(self) -> None:
        """The broker came back without its logs: read the topic again from the
        start (a position past the new log's end would skip its first records)."""
        self._rewind = True

    @staticmethod
    async def _caught_up(consumer, tps, ends) -> bool:
        for tp in tps:
            if await consumer.position(tp) < ends.get(tp.partition, 0):
                return False
        return True

    def apply(self, msg) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def after_batch(self) -> None:
        """Called after each fetched batch was applied."""

    @mode.Service.task
    async def _read(self) -> None:
        settings = self.runtime.settings
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else 500,
            max_partition_fetch_bytes=16 << 20,
            **aiokafka_config(settings),
        )
        await consumer.start()
        try:
            parts = sorted(consumer.partitions_for_topic(self.topic) or ())
            while not parts and not self.should_stop:  # topic not created yet
                await self.sleep(0.2)
                await consumer.topics()  # refreshes the metadata
                parts = sorted(consumer.partitions_for_topic(self.topic) or ())
            tps = [TopicPartition(self.topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await high_watermarks_async(
                settings.bootstrap_servers, self.topic, parts, embedded=settings.embedded_broker,
                client_config={k: v for k, v in aiokafka_config(settings).items() if k != "bootstrap_servers"},
            )  # fmt: skip
            started = time.monotonic()
            while not self.should_stop:
                if self._rewind:
                    self._rewind = False
                    await consumer.seek_to_beginning(*tps)
                if not self.ready.is_set() and await self._caught_up(consumer, tps, ends):
                    self.ready.set()
                    logger.info(
                        "%s: read %d records in %.2fs", self.topic, self.records_read,
                        time.monotonic() - started,
                    )  # fmt: skip
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for _, msgs in batch.items():
                    for msg in msgs:
                        self.records_read += 1
                        self.apply(msg)
                await self.after_batch()
        finally:
            await consumer.stop()


class ItemsFeed(BroadcastFeed):
    """Item records -> the item catalogue (explicit vectors or metadata)."""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(runtime, **kwargs)
        self.topic = runtime.topics.items
        self.rejected: list[tuple[object, str]] = []

    def apply(self, msg) -> None:
        counters = self.runtime.counters
        if msg.value is None:  # tombstone: the item is gone; keep its vector for old clicks
            return
        try:
            record = decode_item(msg.value)
            self.runtime.items.upsert_record(record)
            counters.items_loaded += 1
        except (ValueError, BadRecord) as exc:
            reason = exc.reason if isinstance(exc, BadRecord) else str(exc)
            counters.items_rejected += 1
            self.rejected.append((msg, reason))
            logger.warning("item at %s/%d rejected: %s", msg.partition, msg.offset, reason)

    async def after_batch(self) -> None:
        """Dead-letter the rejected items; only the leader writes them (every
        worker reads every item), the others just count."""
        if not self.rejected:
            return
        rejected, self.rejected = self.rejected, []
        if not self.runtime.is_leader():
            return
        now = int(time.time() * 1000)
        records = []
        for msg, reason in rejected:
            records += dlq_records(
                [(msg.key, msg.value, msg.offset, reason)], self.topic, msg.partition, now
            )
        await self.runtime.producer.send(
            self.runtime.topics.items_dlq, [(0, key, value) for _, key, value in records]
        )


class CentresFeed(BroadcastFeed):
    """Centre sets -> the runtime's current centres (newest version wins)."""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(runtime, **kwargs)
        self.topic = runtime.topics.centres

    def apply(self, msg) -> None:
        if msg.value is None:
            return
        try:
            centres = decode_centres(msg.value)
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("centres record at offset %d rejected: %s", msg.offset, exc)
            return
        self.runtime.install_centres(centres)


class LearntFeed(BroadcastFeed):
    """Learnt-items records -> the learner's published parts (:mod:`stream.app.learnt`)."""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(runtime, **kwargs)
        self.topic = runtime.topics.learnt
        self.batch: list[tuple[int, bytes, bytes]] = []

    def apply(self, msg) -> None:
        if msg.key is not None:
            self.batch.append((msg.partition, msg.key, msg.value))

    async def after_batch(self) -> None:
        if self.batch:
            batch, self.batch = self.batch, []
            learnt.receive(self.runtime, batch)


class RegistryFeed(BroadcastFeed):
    """Worker records -> the registry view (who owns what, cluster sizes)."""

    def __init__(self, runtime: Runtime, view: RegistryView, **kwargs):
        super().__init__(runtime, **kwargs)
        self.topic = runtime.topics.workers
        self.view = view

    def apply(self, msg) -> None:
        record = decode_worker(msg.value) if msg.value is not None else None
        if record is not None:
            self.view.update(record)
