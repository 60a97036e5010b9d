"""What the worker's services share: settings, topics, the item catalogue,
the current centres, the producer and the counters behind /stats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.app.metrics import Metrics
from stream.core.assign import FirstClickCache
from stream.core.centres import CentreSet
from stream.core.itemlearn import ItemLearner, PartitionParts
from stream.core.items import ItemCatalog
from stream.core.pipeline import EngineConfig
from stream.io.kafka import aiokafka_config
from stream.io.topics import Topics
from stream.settings import Settings

logger = logging.getLogger(__name__)

# (partition, key, value) or (partition, key, value, headers), headers: [(name, bytes)]
Record = tuple[int, bytes | None, bytes] | tuple[int, bytes | None, bytes, list]


class EarlierBatchFailed(Exception):
    """A batch was not sent because the batch before it, to the same topic
    partition, failed (see :class:`BatchProducer`)."""


def failure(future: asyncio.Future) -> str | None:
    """How ``future`` ended without a result ("cancelled" or the exception's
    repr); None if it has a result or has not ended."""
    if not future.done():
        return None
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    return None if exc is None else repr(exc)


def first_failed(futures) -> asyncio.Future | None:
    """The first of ``futures`` that ended without a result, None if none has (yet)."""
    return next((f for f in futures if failure(f) is not None), None)


async def acked(futures: Sequence[asyncio.Future]) -> list:
    """Wait for batch futures of :meth:`BatchProducer.send_nowait` and return
    their results. A cancelled waiter cancels only its own wait: the futures
    are shared by other callers whose records ride in the same batches."""
    return await asyncio.gather(*(asyncio.shield(f) for f in futures))


class BatchProducer:
    """Produces lists of records as whole record batches (``send_batch``):
    far above the rate of one ``send`` per record (``clusterstream bench e2e``).

    Per (topic, partition) one batch is in flight at a time and the next one
    is open: records queued while a batch waits for its ack are appended to
    the open batch, which goes out as soon as that ack arrives. A slow ack
    (a busy broker) then costs one round trip for everything queued behind
    it, instead of one round trip per queued call (what a chain of separate
    batches costs, aiokafka keeping one batch per partition in flight): the
    Kafka producer's accumulator, for whole lists of records.

    A batch whose predecessor failed is not sent and fails too
    (:class:`EarlierBatchFailed`): a partition's records never reach the
    broker with a gap before them, so a consumer that drops what lies below
    its watermark (the CF owner) drops no record whose batch before it was
    lost. The batches queued after a failure fail with it; the first one
    queued after they have all ended is sent. Callers that must not send
    past a failure check their own futures before queueing more (the hot
    path does, and replays from its last flush).
    """

    def __init__(self, settings: Settings, role: str = "worker"):
        self._settings = settings
        self._role = role
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        # per (topic, partition): the batch still taking records, and its sender
        self._open: dict[tuple[str, int], tuple[Any, asyncio.Future]] = {}
        # per (topic, partition): the sender of the newest batch (done at its ack)
        self._last: dict[tuple[str, int], asyncio.Future] = {}
        self.failures: dict[str, int] = {}  # per topic: batches that failed (/metrics)

    async def start(self) -> None:
        """Connect (aiokafka wants a running loop, hence not in __init__)."""
        self._producer = AIOKafkaProducer(
            client_id=f"{self._settings.app_id}-{self._role}",
            linger_ms=0,
            max_batch_size=1 << 20,
            max_request_size=16 << 20,
            acks="all",
            **aiokafka_config(self._settings),
        )
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """Whether the broker answers a metadata request within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout_s)
        except Exception:  # any failure: not answering
            return False
        return True

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (cached)."""
        if topic not in self._partitions:
            parts = await self._producer.partitions_for(topic)
            self._partitions[topic] = len(parts)
        return self._partitions[topic]

    def send_nowait(self, topic: str, records: Sequence[Record]) -> list[asyncio.Future]:
        """Queue ``records`` at once (no await: nothing runs between a caller's
        check of its earlier futures and this); returns the futures of the
        batches that carry them, each resolved at its ack to ``(partition,
        offset after the batch's last record)``. Records of later calls may
        join the same batch (so the offset may lie past this call's records);
        batches of a partition reach the broker in call order. Await them
        with :func:`acked`."""
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for rec in records:
            by_partition[rec[0]].append(rec)
        futures: list[asyncio.Future] = []
        for partition, recs in by_partition.items():
            key = (topic, partition)
            batch, sender = self._open.get(key) or self._new_batch(topic, partition)
            for rec in recs:
                k, value, headers = rec[1], rec[2], rec[3] if len(rec) > 3 else None
                if batch.append(key=k, value=value, timestamp=None, headers=headers) is None:
                    futures.append(sender)
                    batch, sender = self._new_batch(topic, partition)
                    if batch.append(key=k, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a record for {topic} is larger than a request")
            futures.append(sender)
        return futures

    def _new_batch(self, topic: str, partition: int) -> tuple[Any, asyncio.Future]:
        """Open a new batch for (topic, partition), sent after the ack of the one before."""
        key = (topic, partition)
        batch = self._producer.create_batch()
        sender = asyncio.ensure_future(self._send(batch, topic, partition, self._last.get(key)))
        self._open[key] = (batch, sender)
        self._last[key] = sender
        sender.add_done_callback(lambda done: self._ended(key, batch, done))
        return batch, sender

    def _ended(self, key: tuple[str, int], batch, sender: asyncio.Future) -> None:
        if self._last.get(key) is sender:
            del self._last[key]
        if key in self._open and self._open[key][0] is batch:
            del self._open[key]  # its sender never got to close it (cancelled)

    async def _send(self, batch, topic: str, partition: int, before: asyncio.Future | None):
        key = (topic, partition)
        if before is not None:
            await asyncio.wait([before])
        if key in self._open and self._open[key][0] is batch:
            del self._open[key]  # closed: later records go to a new batch
        why = failure(before) if before is not None else None
        try:
            if why is not None:
                raise EarlierBatchFailed(
                    f"not sent: the batch before it to {topic}[{partition}]: {why}"
                )
            count = batch.record_count()
            ack = await self._producer.send_batch(batch, topic, partition=partition)
            meta = await ack
        except Exception:
            self.failures[topic] = self.failures.get(topic, 0) + 1
            raise
        return partition, meta.offset + count

    async def send(self, topic: str, records: Sequence[Record]) -> dict[int, int]:
        """Send ``records`` and wait for the acks; returns, per partition, the
        offset after the last record of the batches that carried them (records
        of other calls may have ridden in the same batches, after these)."""
        ends: dict[int, int] = {}
        for partition, end in await acked(self.send_nowait(topic, records)):
            ends[partition] = max(ends.get(partition, 0), end)
        return ends

    async def send_one(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ):
        """Send one record (low-volume topics) and wait for the ack."""
        try:
            return await (await self._producer.send(topic, value, key=key, partition=partition))
        except Exception:
            self.failures[topic] = self.failures.get(topic, 0) + 1
            raise


@dataclass
class Counters:
    """Monotonic counters shown on /stats and /metrics."""

    events_applied: int = 0
    events_rejected: int = 0
    duplicates_dropped: int = 0  # clicks whose event id the user sent recently
    users_expired: int = 0  # idle users removed (user_ttl_s)
    unknown_items: int = 0
    unassigned: int = 0
    assignments_emitted: int = 0
    cf_deltas_sent: int = 0
    cf_deltas_applied: int = 0
    cf_deltas_duplicate: int = 0
    cf_deltas_local: int = 0  # (batch, cluster) deltas applied in-process
    cf_deltas_echo: int = 0  # their records, skipped when read back
    cf_deltas_rejected: int = 0
    items_loaded: int = 0
    items_rejected: int = 0
    batches: int = 0
    batch_seconds: float = 0.0
    drift_detections: int = 0
    flushes: int = 0
    flush_rows: int = 0  # records written by flushes
    rebalances: int = 0  # partition assignments of the clicks group
    stage_seconds: dict[str, float] = field(default_factory=dict)
    dlq_reasons: dict[str, int] = field(default_factory=dict)  # dead letters by reason

    def count_dead_letters(self, reasons) -> None:
        for reason in reasons:
            self.dlq_reasons[reason] = self.dlq_reasons.get(reason, 0) + 1


@dataclass
class Runtime:
    """Shared state of one worker process."""

    settings: Settings
    topics: Topics
    engine: EngineConfig
    items: ItemCatalog
    producer: BatchProducer
    # the users changelog on its own connection: aiokafka has one produce request
    # in flight per connection, and a flush's megabytes must not hold the outputs
    state_producer: BatchProducer
    centres: CentreSet | None = None
    first_clicks: FirstClickCache = field(default_factory=FirstClickCache)
    learner: ItemLearner | None = None  # item vectors learnt from the clicks
    learnt_parts: PartitionParts | None = None  # the learner's sums by partition (app.learnt)
    learnt_keys: dict[int, bytes] = field(default_factory=dict)  # row -> l: key (app.learnt)
    counters: Counters = field(default_factory=Counters)
    is_leader: Callable[[], bool] = lambda: False
    started_at: float = field(default_factory=time.time)
    items_ready: asyncio.Event = field(default_factory=asyncio.Event)
    centres_listeners: list[Callable[[CentreSet], None]] = field(default_factory=list)
    loop_lag_max_s: float = 0.0
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        engine = settings.worker_engine_config()
        learner = engine.item_learner()
        if learner is not None:
            learner.record = learner.learning  # kept with the users (stream.app.learnt)
        return cls(
            settings=settings,
            topics=Topics(settings),
            engine=engine,
            items=ItemCatalog(engine.dim),
            learner=learner,
            learnt_parts=PartitionParts(learner)
            if learner is not None and learner.learning
            else None,
            producer=BatchProducer(settings),
            state_producer=BatchProducer(settings, "state"),
        )

    def install_centres(self, centres: CentreSet) -> bool:
        """Hot-swap to ``centres`` if it is newer; True when installed."""
        if self.centres is not None and centres.version <= self.centres.version:
            return False
        if centres.dim != self.engine.dim:
            logger.error(
                "ignoring centres version %d of dimension %d (settings say %d)",
                centres.version, centres.dim, self.engine.dim,
            )  # fmt: skip
            return False
        self.centres = centres
        logger.info(
            "centres version %d installed (%s, k=%d)", centres.version, centres.reason, centres.k
        )
        for listener in self.centres_listeners:
            listener(centres)
        return True
