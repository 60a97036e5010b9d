"""The CF tables: kept by whichever worker owns a cluster's cf-deltas partition.

A batch loop (consumer group ``<app>-cf``) applies cf-delta records to one
:class:`stream.core.cf.CFTable` per owned partition. A record is dropped as a
duplicate when its ``source.first_offset`` is below the next offset already
applied for its (source partition, cluster); otherwise it is added and that
watermark moves to ``source.last_offset + 1``.

Deltas of the clusters this worker owns take a short cut
(:meth:`CFOwner.apply_local`): the hot path adds them to the table at once,
and their record, still produced (the topic is the tables' log), is skipped
when it comes back. The owner keeps, per (source partition, cluster), the
source ranges applied that way and not read back yet. A record inside the
first of them is skipped (its echo, or a replayed click of it); a record
starting past it retires it (its echo will not come: the worker died before
producing it, or its send failed, and the clicks were replayed); any other record takes the
watermark rule. Local applies do not move the watermark, so a record of an
earlier range still on its way (sent before the partition was owned here, or
by the previous owner of the source partition) is still added. The ranges go
into the snapshot with the table; the hot path applies locally only after the
batch's in-flight marker is written, so a replay after a crash covers a
locally applied batch click by click, never with a range that overlaps it.

The cf-deltas topic is the tables' log: every ``cf_snapshot_interval_s`` (and
when a partition is revoked or the worker stops) the table, its watermarks
and the next cf-deltas offset go to RocksDB in one WriteBatch; after a
restart or a move the table is loaded from the snapshot and the topic is
replayed from that offset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import mode
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from stream.app.brokerwatch import log_start, log_start_after_out_of_range
from stream.app.messages import decode_cf_delta, parse_source_header
from stream.app.runtime import Runtime
from stream.app.cfstore import CFPartitionStore
from stream.app.trace import AppliedTrace
from stream.core.cf import CFDelta, CFTable
from stream.io.kafka import Seeks, batch_loop_consumer

logger = logging.getLogger(__name__)


class CFPartition:
    """One owned cf-deltas partition: its table, watermarks and store."""

    def __init__(self, partition: int, table: CFTable, store: CFPartitionStore):
        self.partition = partition
        self.table = table
        self.store = store
        self.next_offset = 0
        self.watermarks: dict[tuple[int, int], int] = {}
        self.named: set[int] = set()
        self.new_names: dict[int, str] = {}
        # catalogue rows already checked against ``named`` (grows with the catalogue)
        self.checked_rows = np.zeros(0, dtype=bool)
        self.highwater = 0
        self.dirty = False
        # (source partition, cluster) -> source ranges applied in-process, not read back yet
        self.local: dict[tuple[int, int], deque[tuple[int, int]]] = {}


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
        self.applied_trace = AppliedTrace(maxlen=1_000_000)
        # True while the broker is away (set by the app: BrokerWatch)
        self.paused = lambda: False
        # cf-deltas partitions whose log the broker lost, not read from the new start yet
        self.stale_logs: set[int] = set()

    def _path(self, partition: int):
        s = self.runtime.settings
        return s.data_dir / s.app_id / f"cf-p{partition}"

    async def open_partition(self, partition: int) -> CFPartition:
        store = CFPartitionStore(self._path(partition))
        part = CFPartition(partition, self.runtime.engine.cf_table(), store)
        offset, marks, names, local = await asyncio.get_running_loop().run_in_executor(
            self.executor, store.load, part.table
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
        """A cf-deltas partition's next offset is not in its log any more: read
        the log from its start (see :func:`log_start_after_out_of_range`)."""
        moves = await log_start_after_out_of_range(self.consumer, exc, "cf-deltas")
        async with self.lock:
            for tp, (_, start) in moves.items():
                part = self.owned.get(tp.partition)
                if part is not None and tp in self.consumer.assignment():
                    part.next_offset = start
                    part.dirty = True
                    self.seeks.seek(self.consumer, tp, start)

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
            for marks in (part.watermarks, part.local):
                for mark in [m for m in marks if m[0] == source]:
                    del marks[mark]
            part.dirty = True

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

    def apply(self, part: CFPartition, msgs) -> None:
        """Add the non-duplicate deltas of ``msgs`` to the partition's table."""
        counters = self.runtime.counters
        trace = self.runtime.settings.trace_latency
        marks: list[tuple[int, int]] = []
        # per accepted record: cluster, item count, landmark; items flattened
        clusters: list[int] = []
        counts: list[int] = []
        landmarks: list[int] = []
        item_ids: list[str] = []
        values: list[float] = []
        ts_min, ts_max = None, None
        for msg in msgs:
            if msg.offset < part.next_offset:
                continue
            part.next_offset = msg.offset + 1
            echo = self._echo_by_header(part, msg) if part.local else None
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
            if (
                echo is None
                and mark in part.local
                and self._applied_here(part, mark, src["first_offset"], src["last_offset"])
            ):
                counters.cf_deltas_echo += 1  # a record without the source header
                continue
            if src["first_offset"] < part.watermarks.get(mark, 0):
                counters.cf_deltas_duplicate += 1
                continue
            part.watermarks[mark] = src["last_offset"] + 1
            if trace:
                marks.append((src["partition"], src["last_offset"]))
            items = rec["items"]
            clusters.append(rec["cluster_id"])
            counts.append(len(items))
            landmarks.append(rec["landmark"])
            item_ids.extend(items)
            values.extend(items.values())
            ts_min = rec["ts_min"] if ts_min is None else min(ts_min, rec["ts_min"])
            ts_max = rec["ts_max"] if ts_max is None else max(ts_max, rec["ts_max"])
            counters.cf_deltas_applied += 1
        part.dirty = True
        if not clusters:
            return
        # one add: bring every record's values to the newest landmark
        landmark = max(landmarks)
        half_life = part.table.half_life_ms
        counts_arr = np.asarray(counts, dtype=np.int64)
        scale = np.repeat(
            2.0 ** ((np.asarray(landmarks, dtype=np.float64) - landmark) / half_life), counts_arr
        )
        catalog = self.runtime.items
        rows = catalog.rows_for(item_ids)
        keys = catalog.keys[rows]
        self._note_names(part, rows, keys)
        part.table.add(
            CFDelta(
                np.repeat(np.asarray(clusters, dtype=np.int64), counts_arr),
                keys,
                np.asarray(values, dtype=np.float64) * scale,
                landmark,
                ts_min,
                ts_max,
            )
        )
        self.runtime.metrics.observe_click_to_cf(ts_max)
        if marks:
            now = time.time()
            self.applied_trace.extend((p, o, now) for p, o in marks)

    def _echo_by_header(self, part: CFPartition, msg) -> bool | None:
        """Whether ``msg`` lies in a source range applied in-process, from its
        key and source header alone (no parse of the value); None without them."""
        source = parse_source_header(msg.headers)
        if source is None or msg.key is None or not msg.key.isdigit():
            return None
        mark = (source[0], int(msg.key))
        if mark not in part.local:
            return False
        return self._applied_here(part, mark, source[1], source[2])

    @staticmethod
    def _applied_here(part: CFPartition, mark: tuple[int, int], first: int, last: int) -> bool:
        """Whether a record of ``mark`` covering source offsets ``first..last``
        lies in a source range applied in-process (see the module docstring);
        retires the ranges it has passed."""
        spans = part.local[mark]
        while spans and spans[0][1] < first:
            spans.popleft()  # passed: its record never came
        inside = bool(spans) and spans[0][0] <= first and last <= spans[0][1]
        if inside:
            if (first, last) == spans[0]:
                spans.popleft()  # its own record: nothing more of it to come
            part.watermarks[mark] = max(part.watermarks.get(mark, 0), last + 1)
        if not spans:
            del part.local[mark]
        return inside

    def apply_local(
        self, source: int, first: int, last: int, delta: CFDelta, partition_of,
        ts_max_of: dict[int, int] | None = None,
    ) -> int:  # fmt: skip
        """Add the part of a hot-path batch's ``delta`` (source partition
        ``source``, offsets ``first..last``) that belongs to clusters whose
        cf-deltas partition (``partition_of(cluster_id)``) is owned here;
        returns how many clusters took it. Nothing while the owner holds its
        lock (a snapshot, a rebalance): those deltas arrive through the topic.
        A cluster whose watermark is past ``first`` is left to the topic too,
        where the watermark rule drops its record as a duplicate (what it
        covers was added already). ``ts_max_of``: cluster id -> newest click
        time of that cluster in the batch (default the delta's ``ts_max``)."""
        if not self.owned or not len(delta) or self.lock.locked():
            return 0
        clusters = np.unique(delta.cluster_ids).tolist()
        by_part: dict[int, list[int]] = {}
        for cid in clusters:
            q = partition_of(cid)
            if q in self.owned and first >= self.owned[q].watermarks.get((source, cid), 0):
                by_part.setdefault(q, []).append(cid)
        if not by_part:
            return 0
        catalog = self.runtime.items
        for q, mine in by_part.items():
            part = self.owned[q]
            sel = np.isin(delta.cluster_ids, mine)
            keys = delta.item_keys[sel]
            self._note_names(part, catalog.rows_for_keys(keys), keys)
            ts_max = delta.ts_max if ts_max_of is None else max(ts_max_of[c] for c in mine)
            part.table.add(
                CFDelta(
                    delta.cluster_ids[sel], keys, delta.values[sel],
                    delta.landmark_ms, delta.ts_min, ts_max,
                )
            )  # fmt: skip
            for cid in mine:
                part.local.setdefault((source, cid), deque()).append((first, last))
            part.dirty = True
        applied = sum(len(mine) for mine in by_part.values())
        self.runtime.counters.cf_deltas_local += applied
        self.runtime.metrics.observe_click_to_cf(delta.ts_max)
        if self.runtime.settings.trace_latency:
            self.applied_trace.append((source, last, time.time()))
        return applied

    def _note_names(self, part: CFPartition, rows: np.ndarray, keys: np.ndarray) -> None:
        """Remember the item ids of keys the snapshot has not named yet
        (``rows``/``keys``: (n,) catalogue rows and item keys of a delta). Only
        rows not seen before are looked at, so this is no loop over every item
        of every delta."""
        catalog = self.runtime.items
        if len(part.checked_rows) < len(catalog):
            grown = np.zeros(max(len(catalog), 2 * len(part.checked_rows)), dtype=bool)
            grown[: len(part.checked_rows)] = part.checked_rows
            part.checked_rows = grown
        new = np.flatnonzero(~part.checked_rows[rows])
        if not len(new):
            return
        for key, row in zip(keys[new].tolist(), rows[new].tolist(), strict=True):
            if key not in part.named:
                part.named.add(key)
                part.new_names[key] = catalog.ids[row]
        part.checked_rows[rows[new]] = True

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
                    if cid in centres.aliases:
                        continue  # retired: its members moved to the alias target
                    keys, scores = part.table.top(cid, settings.candidates_n)
                    items = [
                        {"item_id": catalog.id_of_key(k) or str(k), "score": round(sc, 6)}
                        for k, sc in zip(keys.tolist(), scores.tolist(), strict=True)
                    ]
                    value = {
                        "cluster_id": cid,
                        "items": items,
                        "centres_version": centres.version,
                        "ts": now,
                    }
                    records.append((part.partition, str(cid).encode(), orjson.dumps(value)))
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
