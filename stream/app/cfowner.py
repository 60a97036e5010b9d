"""The CF tables: kept by whichever worker owns a cluster's cf-deltas partition.

A batch loop (consumer group ``<app>-cf``) applies cf-delta records to one
:class:`stream.core.cf.CFTable` per owned partition
(:class:`stream.app.cfpartition.CFPartition`, which keeps the
de-duplication rules: watermarks, and the source ranges applied in-process).
Deltas of the clusters this worker owns also take a short cut
(:meth:`CFOwner.apply_local`): the hot path adds them to the table at once,
and their record, still produced, is skipped when it comes back. Why the two
routes together add each click exactly once, crashes included, is argued in
:mod:`stream.app.partition`.

The cf-deltas topic is the tables' log: every ``cf_snapshot_interval_s`` (and
when a partition is revoked or the worker stops) the table, its watermarks
and the next cf-deltas offset go to RocksDB in one WriteBatch; after a
restart or a move the table is loaded from the snapshot and the topic is
replayed from that offset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import mode
import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from stream.app.brokerwatch import log_start, resume_after_out_of_range
from stream.app.cfpartition import CFPartition
from stream.app.cfstore import CFPartitionStore
from stream.app.runtime import Runtime
from stream.app.stallwatch import StallWatch, cf_stall_fault, check_cf
from stream.app.stallwatch import watch as watch_stalls
from stream.app.trace import LatencyTrace
from stream.core.cf import CFDelta, CFTable
from stream.core.pairs import PairDelta
from stream.io.kafka import Seeks, batch_loop_consumer
from stream.wire.candidates import candidates_record
from stream.wire.cf_deltas import decode_cf_delta

logger = logging.getLogger(__name__)


class CFOwner(mode.Service):
    """Consumes cf-deltas in batches and keeps the owned clusters' CF tables."""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(**kwargs)
        self.runtime = runtime
        self.owned: dict[int, CFPartition] = {}
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cf")
        self.consumer: AIOKafkaConsumer | None = None
        self.seeks = Seeks()  # every seek of self.consumer goes through it
        # (source partition, last source offset, wall time) of applied deltas,
        # kept when settings.trace_latency is on (the e2e benchmark reads it)
        self.candidates_sent = 0
        self.applied_trace = LatencyTrace(maxlen=1_000_000)
        # True while the broker is away (set by the app: BrokerWatch)
        self.paused = lambda: False
        # cf-deltas partitions whose log the broker lost, not read from the new start yet
        self.stale_logs: set[int] = set()
        self.stalls = StallWatch(runtime.settings.stall_s)
        self.batches = 0  # fetches with records applied (the stall fault counts them)
        self.warned_direction = False  # logged once: co-click records of the other kind

    def _path(self, partition: int):
        s = self.runtime.settings
        return s.data_dir / s.app_id / f"cf-p{partition}"

    async def open_partition(self, partition: int) -> CFPartition:
        store = CFPartitionStore(self._path(partition))
        engine = self.runtime.engine
        part = CFPartition(partition, engine.cf_table(), store, engine.coclick_table())
        offset, marks, names, local = await asyncio.get_running_loop().run_in_executor(
            self.executor, store.load, part.table, part.coclick
        )
        part.next_offset, part.watermarks, part.local = offset, marks, local
        if names:
            self.runtime.items.rows_for(list(names.values()))
            part.named = set(names)
        logger.info(
            "cf partition %d: %d entries, next offset %d", partition, len(part.table), offset
        )
        return part

    async def snapshot(self, part: CFPartition) -> None:
        if not part.dirty:
            return
        new_names, part.new_names = part.new_names, {}
        await asyncio.get_running_loop().run_in_executor(
            self.executor,
            part.store.save,
            part.table,
            part.coclick,
            part.next_offset,
            dict(part.watermarks),
            new_names,
            {mark: list(spans) for mark, spans in part.local.items()},
        )
        part.dirty = False
        if self.consumer is not None:
            tp = TopicPartition(self.runtime.topics.cf_deltas, part.partition)
            if tp in self.consumer.assignment():
                try:
                    await self.consumer.commit({tp: part.next_offset})
                except KafkaError as exc:  # the snapshot has the offset; Kafka's is for lag
                    logger.warning("cf partition %d: offset commit failed: %r", tp.partition, exc)

    async def _log_moved(self, exc: OffsetOutOfRangeError) -> None:
        """A cf-deltas partition's next offset is not in its log any more: read on
        where :func:`stream.app.brokerwatch.resume_offset` says."""
        moves = await resume_after_out_of_range(self.consumer, exc, "cf-deltas")
        async with self.lock:
            for tp, (_, resume) in moves.items():
                part = self.owned.get(tp.partition)
                if part is not None and tp in self.consumer.assignment():
                    part.next_offset = resume
                    part.dirty = True
                    self.seeks.seek(self.consumer, tp, resume)

    async def logs_new(self) -> None:
        """The broker came back without its logs: every cf-deltas partition,
        owned now or taken later, is read from the new log's start."""
        async with self.lock:
            topic = self.runtime.topics.cf_deltas
            self.stale_logs = set(range(await self.runtime.producer.partitions(topic)))
            for part in list(self.owned.values()):
                await self._rebase(part)

    async def _rebase(self, part: CFPartition) -> None:
        if part.partition not in self.stale_logs or self.consumer is None:
            return
        self.stale_logs.discard(part.partition)
        tp = TopicPartition(self.runtime.topics.cf_deltas, part.partition)
        start = await log_start(self.consumer, tp)
        logger.warning(
            "cf partition %d: the broker came back without its logs: reading the new log "
            "from offset %d instead of %d", part.partition, start, part.next_offset,
        )  # fmt: skip
        part.next_offset = start
        # the clicks logs went with it: every watermark names an old offset (a
        # partition taken after the hot path's source_rebased still has them)
        part.watermarks.clear()
        part.local.clear()
        part.dirty = True
        if tp in self.consumer.assignment():
            self.seeks.seek(self.consumer, tp, start)
        await self.snapshot(part)  # a restart then reads the new log too

    def source_rebased(self, source: int) -> None:
        """Clicks partition ``source``'s log started over (the broker lost it):
        forget the watermarks and in-process ranges of its old offsets, so the
        deltas of the new log's clicks are not taken for duplicates."""
        for part in self.owned.values():
            part.forget_source(source)

    @mode.Service.task
    async def _consume(self) -> None:
        runtime = self.runtime
        settings = runtime.settings
        await runtime.items_ready.wait()
        self.consumer = batch_loop_consumer(settings, "cf")
        self.consumer.subscribe([runtime.topics.cf_deltas], listener=_Listener(self))
        await self.consumer.start()
        last_snapshot = time.monotonic()
        try:
            while not self.should_stop:
                if self.paused():
                    await asyncio.sleep(0.1)  # the broker is away
                    continue
                seeks = self.seeks.snapshot()
                try:
                    got = await self.consumer.getmany(timeout_ms=200, max_records=20_000)
                except OffsetOutOfRangeError as exc:
                    await self._log_moved(exc)
                    continue
                except NoOffsetForPartitionError as exc:
                    # assigned, not positioned yet: the listener's seek is on its way
                    for tp in exc.args:
                        part = self.owned.get(getattr(tp, "partition", -1))
                        if part is not None and tp in self.consumer.assignment():
                            self.seeks.seek(self.consumer, tp, part.next_offset)
                    continue
                async with self.lock:
                    for tp, msgs in got.items():
                        part = self.owned.get(tp.partition)
                        if part is not None and msgs and self.seeks.moved(seeks, tp.partition):
                            # fetched before a seek (a rebase): read again from there
                            logger.debug(
                                "cf partition %d: a fetch before a seek dropped", tp.partition
                            )
                            self.seeks.seek(self.consumer, tp, part.next_offset)
                        elif part is not None and msgs:
                            part.highwater = self.consumer.highwater(tp) or part.highwater
                            self.apply(part, msgs)
                    if got:
                        self._count_batch()
                    if time.monotonic() - last_snapshot >= settings.cf_snapshot_interval_s:
                        for part in self.owned.values():
                            await self.snapshot(part)
                        last_snapshot = time.monotonic()
        finally:
            async with self.lock:
                for part in self.owned.values():
                    await self.snapshot(part)
                    part.store.close()
                self.owned.clear()
            await self.consumer.stop()
            self.executor.shutdown(wait=True)

    def _count_batch(self) -> None:
        self.batches += 1
        if self.runtime.settings.crash_at == f"cf_stall_fetch:{self.batches}":
            self.add_future(cf_stall_fault(self))

    @mode.Service.task
    async def _watch_stalls(self) -> None:
        """Finds and undoes a stalled CF loop (:func:`stream.app.stallwatch.check_cf`)."""
        await watch_stalls(self, check_cf)

    def apply(self, part: CFPartition, msgs) -> None:
        """Add the deltas of ``msgs`` that are neither echoes of local applies
        nor duplicates to the partition's table (:mod:`stream.app.cfpartition`)."""
        counters = self.runtime.counters
        trace = self.runtime.settings.trace_latency
        marks: list[tuple[int, int]] = []
        records = []
        for msg in msgs:
            if msg.offset < part.next_offset:
                continue
            part.next_offset = msg.offset + 1
            echo = part.echo_by_header(msg) if part.local else None
            if echo:
                counters.cf_deltas_echo += 1
                continue
            try:
                rec = decode_cf_delta(msg.value)
            except ValueError as exc:
                counters.cf_deltas_rejected += 1
                logger.warning("cf-delta at %d/%d rejected: %s", part.partition, msg.offset, exc)
                continue
            src = rec["source"]
            mark = (src["partition"], rec["cluster_id"])
            first, last = src["first_offset"], src["last_offset"]
            if echo is None and mark in part.local and part.applied_here(mark, first, last):
                counters.cf_deltas_echo += 1  # a record without the source header
                continue
            if part.duplicate(mark, first, last):
                counters.cf_deltas_duplicate += 1
                continue
            if trace:
                marks.append((src["partition"], last))
            records.append(rec)
            counters.cf_deltas_applied += 1
        part.dirty = True
        self._add_pairs(part, [r for r in records if r.get("pairs")])
        # the CF table (and its clock) only from records with items: the global
        # scope's record has none, and may come in any fetch
        records = [r for r in records if r["items"]]
        if records:
            self._add(part, records)
        if marks:
            now = time.time()
            self.applied_trace.extend((p, o, now) for p, o in marks)

    def _add(self, part: CFPartition, records: list[dict]) -> None:
        """Add decoded cf-delta ``records`` to the table in one add, every
        record's values brought to the newest landmark."""
        counts, landmark, scale = _to_one_landmark(
            records, lambda r: r["items"], "landmark", part.table.half_life_ms
        )
        item_ids = [item for r in records for item in r["items"]]
        values = [value for r in records for value in r["items"].values()]
        catalog = self.runtime.items
        rows = catalog.rows_for(item_ids)
        keys = catalog.keys[rows]
        part.note_names(catalog, rows, keys)
        ts_max = max(r["ts_max"] for r in records)
        part.table.add(
            CFDelta(
                np.repeat(np.fromiter((r["cluster_id"] for r in records), np.int64), counts),
                keys,
                np.asarray(values, dtype=np.float64) * scale,
                landmark,
                min(r["ts_min"] for r in records),
                ts_max,
            )
        )
        self.runtime.metrics.observe_click_to_cf(ts_max)

    def _add_pairs(self, part: CFPartition, records: list[dict]) -> None:
        """Add the co-click pairs of decoded ``records`` to the co-click table in
        one add, as :meth:`_add` does for the items."""
        if not records:
            return
        counts, landmark, scale = _to_one_landmark(
            records, lambda r: r["pairs"]["a"], "pairs_landmark", part.coclick.half_life_ms
        )
        a = [item for r in records for item in r["pairs"]["a"]]
        b = [item for r in records for item in r["pairs"]["b"]]
        values = [v for r in records for v in r["pairs"]["values"]]
        catalog = self.runtime.items
        rows = catalog.rows_for(a + b)
        keys = catalog.keys[rows]
        part.note_names(catalog, rows, keys)
        n = len(a)
        delta = PairDelta(
            np.repeat(np.fromiter((r["cluster_id"] for r in records), np.int64), counts),
            keys[:n], keys[n:], np.asarray(values, dtype=np.float64) * scale, landmark,
            min(r["ts_min"] for r in records), max(r["pairs_ts_max"] for r in records),
        )  # fmt: skip
        # pairs of a worker with coclick_directed off (or of records from before
        # it) say nothing by their order: a directed table adds them both ways
        unordered = np.repeat([not r["pairs_directed"] for r in records], counts)
        if part.coclick.directed and unordered.any() and not self.warned_direction:
            self.warned_direction = True
            logger.warning(
                "co-click records written without coclick_directed reach this worker's "
                "directed tables: added both ways; every worker should run the same "
                "coclick_directed"
            )
        part.coclick.add(delta, unordered)

    def apply_local(
        self, source: int, first: int, last: int, delta: CFDelta, partition_of,
        ts_max_of: dict[int, int] | None = None, pairs: PairDelta | None = None,
        pairs_ts_max_of: dict[int, int] | None = None,
    ) -> int:  # fmt: skip
        """Add the part of a hot-path batch's ``delta`` (source partition
        ``source``, offsets ``first..last``) that belongs to clusters whose
        cf-deltas partition (``partition_of(cluster_id)``) is owned here;
        returns how many clusters took it. Nothing while the owner holds its
        lock (a snapshot, a rebalance): those deltas arrive through the topic.
        A cluster whose watermark is past ``first`` is left to the topic too,
        where the watermark rule drops its record as a duplicate (what it
        covers was added already). ``ts_max_of``: cluster id -> newest click
        time of that cluster in the batch (default the delta's ``ts_max``);
        ``pairs``: the batch's co-clicks, which go with their scope's cluster,
        ``pairs_ts_max_of``: scope -> newest click with pairs (default the pairs')."""
        pairs = pairs if pairs is not None else PairDelta.empty()
        if not self.owned or not (len(delta) or len(pairs)) or self.lock.locked():
            return 0
        clusters = np.union1d(delta.cluster_ids, pairs.scopes).tolist()
        by_part: dict[int, list[int]] = {}
        for cid in clusters:
            q = partition_of(cid)
            if q in self.owned and first >= self.owned[q].watermarks.get((source, cid), 0):
                by_part.setdefault(q, []).append(cid)
        if not by_part:
            return 0
        for q, mine in by_part.items():
            # the tables' clocks, as the clusters' records say
            times = [ts_max_of.get(c, 0) if ts_max_of else delta.ts_max for c in mine]
            of = pairs_ts_max_of or {}
            pair_ts = max((of[c] for c in mine if c in of), default=pairs.ts_max)
            self.owned[q].add_local(
                source, first, last, mine, delta, self.runtime.items, max(times),
                dataclasses.replace(pairs, ts_max=pair_ts),
            )  # fmt: skip
        applied = sum(len(mine) for mine in by_part.values())
        self.runtime.counters.cf_deltas_local += applied
        self.runtime.metrics.observe_click_to_cf(delta.ts_max)
        if self.runtime.settings.trace_latency:
            self.applied_trace.append((source, last, time.time()))
        return applied

    @mode.Service.task
    async def _candidates(self) -> None:
        """Every ``candidates_interval_s``: the top items of each owned cluster
        on the cluster-candidates topic (key cluster_id, same partition as its
        cf-deltas)."""
        runtime = self.runtime
        settings = runtime.settings
        while not self.should_stop:
            await self.sleep(settings.candidates_interval_s)
            centres = runtime.centres
            if centres is None:
                continue
            now = int(time.time() * 1000)
            records = []
            catalog = runtime.items
            for part in list(self.owned.values()):
                for cid in part.table.clusters:
                    if cid < 0 or cid in centres.aliases:
                        continue  # the unclustered clicks' scope; retired: moved to the alias
                    keys, scores = part.table.top(cid, settings.candidates_n)
                    ids = [catalog.id_of_key(k) or str(k) for k in keys.tolist()]
                    key, value = candidates_record(cid, ids, scores.tolist(), centres.version, now)
                    records.append((part.partition, key, value))
            if records:
                try:
                    await runtime.producer.send(runtime.topics.candidates, records)
                except Exception:  # the next round sends fresh ones
                    logger.exception("could not send cluster candidates")
                    continue
                self.candidates_sent += len(records)

    # -- reading ---------------------------------------------------------------------
    def tables(self) -> list[CFTable]:
        return [p.table for p in self.owned.values()]

    def lag(self) -> int:
        return sum(max(p.highwater - p.next_offset, 0) for p in self.owned.values())

    def table_of(self, cluster_id: int) -> CFTable | None:
        for part in self.owned.values():
            if cluster_id in part.table.clusters:
                return part.table
        return None


def _to_one_landmark(records: list[dict], entries, field: str, half_life_ms: float):
    """(counts (r,) int64 of each record's entries (``entries(record)``), the
    newest ``field`` landmark, (sum of counts,) float64 factors bringing each
    entry to it)."""
    counts = np.fromiter((len(entries(r)) for r in records), np.int64, len(records))
    landmarks = np.fromiter((r[field] for r in records), np.float64, len(records))
    landmark = max(r[field] for r in records)
    return counts, landmark, np.repeat(2.0 ** ((landmarks - landmark) / half_life_ms), counts)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: CFOwner):
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        owner = self.owner
        async with owner.lock:
            for tp in revoked:
                part = owner.owned.pop(tp.partition, None)
                if part is not None:
                    await owner.snapshot(part)
                    part.store.close()

    async def on_partitions_assigned(self, assigned) -> None:
        owner = self.owner
        async with owner.lock:
            for tp in assigned:
                if tp.partition not in owner.owned:
                    owner.owned[tp.partition] = await owner.open_partition(tp.partition)
                owner.seeks.seek(owner.consumer, tp, owner.owned[tp.partition].next_offset)
                await owner._rebase(owner.owned[tp.partition])
