"""What the worker's services share: settings, topics, the item catalogue,
the current centres, the producer and the counters behind /stats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from stream.app.topics import Topics
from stream.core.assign import FirstClickCache
from stream.core.centres import CentreSet
from stream.core.items import ItemCatalog
from stream.core.pipeline import EngineConfig
from stream.io.kafka import aiokafka_config
from stream.settings import Settings

logger = logging.getLogger(__name__)

Record = tuple[int, bytes | None, bytes]  # (partition, key, value)


class BatchProducer:
    """Produces lists of records as whole record batches (``send_batch``):
    ~10x the rate of one ``send`` per record on this stack."""

    def __init__(self, settings: Settings, role: str = "worker"):
        self._settings = settings
        self._role = role
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        # per (topic, partition): resolved once the newest batch is handed to aiokafka
        self._queued: dict[tuple[str, int], asyncio.Future] = {}

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

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (cached)."""
        if topic not in self._partitions:
            parts = await self._producer.partitions_for(topic)
            self._partitions[topic] = len(parts)
        return self._partitions[topic]

    async def send_nowait(self, topic: str, records: Sequence[Record]) -> list[asyncio.Future]:
        """Queue ``records`` as record batches without waiting; returns futures of
        ``(partition, offset after the last record)`` resolved by the acks.

        aiokafka keeps one batch per partition in flight, so ``send_batch``
        waits for the previous batch's ack (~one broker round trip); that wait
        runs in a task here, and the caller goes on. The tasks are chained per
        (topic, partition), so batches reach the broker in call order without
        relying on the order in which aiokafka wakes its waiters (which today
        is FIFO as well: the ordering test passes without the chain too)."""
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for rec in records:
            by_partition[rec[0]].append(rec)
        futures = []
        for partition, recs in by_partition.items():
            batch = self._producer.create_batch()
            for _, key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(self._queue(batch, topic, partition))
                    batch = self._producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record for {topic} is larger than a request")
            futures.append(self._queue(batch, topic, partition))
        return futures

    def _queue(self, batch, topic: str, partition: int) -> asyncio.Future:
        count = batch.record_count()
        before = self._queued.get((topic, partition))
        queued = asyncio.get_running_loop().create_future()
        self._queued[(topic, partition)] = queued

        async def send() -> tuple[int, int]:
            try:
                if before is not None:
                    await before  # never fails: set in the finally below
                ack = await self._producer.send_batch(batch, topic, partition=partition)
            finally:
                queued.set_result(None)
                if self._queued.get((topic, partition)) is queued:
                    del self._queued[(topic, partition)]
            meta = await ack
            return partition, meta.offset + count

        return asyncio.ensure_future(send())

    async def send(self, topic: str, records: Sequence[Record]) -> dict[int, int]:
        """Send ``records`` and wait for the acks; returns, per partition, the
        offset after the last record written."""
        ends: dict[int, int] = {}
        for partition, end in await asyncio.gather(*await self.send_nowait(topic, records)):
            ends[partition] = max(ends.get(partition, 0), end)
        return ends

    async def send_one(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ):
        """Send one record (low-volume topics) and wait for the ack."""
        return await (await self._producer.send(topic, value, key=key, partition=partition))


@dataclass
class Counters:
    """Monotonic counters shown on /stats and /metrics."""

    events_applied: int = 0
    events_rejected: int = 0
    unknown_items: int = 0
    unassigned: int = 0
    assignments_emitted: int = 0
    cf_deltas_sent: int = 0
    cf_deltas_applied: int = 0
    cf_deltas_duplicate: int = 0
    cf_deltas_rejected: int = 0
    items_loaded: int = 0
    items_rejected: int = 0
    batches: int = 0
    batch_seconds: float = 0.0
    drift_detections: int = 0
    flushes: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


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
    counters: Counters = field(default_factory=Counters)
    is_leader: Callable[[], bool] = lambda: False
    started_at: float = field(default_factory=time.time)
    items_ready: asyncio.Event = field(default_factory=asyncio.Event)
    centres_listeners: list[Callable[[CentreSet], None]] = field(default_factory=list)
    loop_lag_max_s: float = 0.0

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        engine = settings.engine_config()
        return cls(
            settings=settings,
            topics=Topics(settings),
            engine=engine,
            items=ItemCatalog(engine.dim),
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
