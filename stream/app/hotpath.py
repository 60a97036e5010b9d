"""The click hot path: a batch loop over the clicks topic, not a faust stream.

Per fetched batch of one clicks partition ``p``:

1. skip records below the store's next offset (already applied);
2. decode and validate the batch as a whole (:mod:`stream.io.clicks`);
3. :func:`stream.core.pipeline.process_batch` on the partition's RocksDB store
   (rows are staged, not written; duplicate event ids are dropped there);
4. write the *in-flight* marker (the batch's last offset) to the store (it
   only moves up);
5. add the CF deltas of clusters whose cf-deltas partition this worker owns
   to their tables (:meth:`stream.app.cfowner.CFOwner.apply_local`; after
   the marker, so a replay covers them click by click);
6. queue the dead letters, assignment changes and CF deltas (not awaited;
   first, before step 4, a failed output of the unflushed clicks makes the
   batch replay from the last flush instead: :meth:`HotPath._check_outputs`);
7. when a flush is due (``flush_interval_s``, ``flush_max_clicks``,
   ``flush_max_rows``), take the dirty rows and the next offset and flush
   them *while the next batches run*: wait for the acks of the outputs
   queued so far, produce the rows and the next-offset marker to the users
   changelog, wait for the acks, then write the same records and the
   changelog position to RocksDB in one WriteBatch and commit the Kafka
   offset (for lag only). One flush at a time per partition; a batch waits
   for it only when ``flush_max_clicks`` clicks piled up behind it, or
   before the cache must drop rows.

Crash at any point: the store holds the state after a flushed offset
completely or not at all (the WriteBatch is atomic), so after a restart the
clicks after it are applied again, never twice. Their outputs may then be
produced twice: assignment and dead-letter records repeat, and CF deltas are
made safe by the in-flight marker: clicks at or below it are re-sent as one
CF delta per click (first = last = its offset), and the CF owner drops every
delta starting below the next offset it has applied for that (source
partition, cluster). A store rebuilt on another machine from the changelog
does not have the marker; it replays the next two flushes' worth of clicks
that way (:meth:`HotPath._replay_end`), unless the owner before handed it over
cleanly. A worker that takes such a partition withdraws that mark first
(:meth:`HotPath._mark_taken`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import operator
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mode
import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from stream.app.brokerwatch import log_start, log_start_after_out_of_range
from stream.app.runtime import Record, Runtime, acked, failure, first_failed
from stream.app.stallwatch import MAX_FETCH_WAIT_MS, StallWatch
from stream.app.stallwatch import check as check_stalls
from stream.app.stores import CompleteFlushes, UserPartitionStore
from stream.core.drift import DriftWatch
from stream.core.pipeline import (
    AssignmentChanges,
    EngineState,
    process_batch,
    reassign,
    warm_up,
)
from stream.io.embedded_broker_workarounds import (
    EMBEDDED_FETCH_MAX_WAIT_MS,
    high_watermarks_async,
)
from stream.io.fetched import FetchedRecords
from stream.io.fetched import load_kernels as load_fetch_kernels
from stream.io.kafka import Seeks, aiokafka_config, batch_loop_consumer
from stream.wire.assignments import assignment_records, load_kernels
from stream.wire.cf_deltas import cf_delta_records
from stream.wire.clicks import decode_clicks
from stream.wire.dlq import dlq_records
from stream.wire.partition import cluster_partition

logger = logging.getLogger(__name__)

FLUSH_CHUNK = 2000  # changelog records queued at a time by a flush
EXPIRE_CHUNK = 4096  # idle users expired at a time between batches
COMMIT_TIMEOUT_S = 5.0  # a Kafka offset commit given up after this (the store has the offset)


@dataclass
class BatchResult:
    """What one batch computed, ready to produce."""

    dlq: list[Record]
    assignments: list[Record]
    cf_deltas: list[Record]
    applied: int
    rejected: int
    duplicates: int
    unknown_items: int
    unassigned: int
    mean_distance: float | None
    next_offset: int
    seconds: dict[str, float]
    # (first offset, last offset, delta, newest click per cluster) for the CF
    # owner's short cut; None in replays
    local_cf: tuple | None = None
    dlq_reasons: tuple[str, ...] = ()  # the reason of each dead letter


class _Stages:
    """Adds the time of each step of a batch to ``sink`` (counters for /stats)."""

    def __init__(self, sink: dict[str, float]):
        self.sink = sink
        self.started = self.last = time.perf_counter()

    def add(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.sink[name] = self.sink.get(name, 0.0) + value
        self.offset = sum(seconds.values())

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        spent = now - self.last - getattr(self, "offset", 0.0)
        self.offset = 0.0
        self.sink[name] = self.sink.get(name, 0.0) + spent
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


class OwnedPartition:
    """A clicks partition this worker owns: its store and replay window."""

    def __init__(self, partition: int, store: UserPartitionStore, replay_until: int):
        self.partition = partition
        self.store = store
        self.replay_until = replay_until  # clicks below it get per-click CF deltas
        self.applied = store.next_offset  # next offset to apply (flushed or not)
        self.pending: list[asyncio.Future] = []  # acks of outputs not awaited yet
        self.flush_pending: list[asyncio.Future] = []  # those the flush in flight waits for
        self.highwater = 0
        self.flushed_at = time.monotonic()
        self.flushing: asyncio.Task | None = None  # the flush in flight, if any


class HotPath(mode.Service):
    """Consumes the clicks topic in batches (consumer group ``<app>-clicks``)."""

    def __init__(self, runtime: Runtime, **kwargs):
        super().__init__(**kwargs)
        self.runtime = runtime
        self.owned: dict[int, OwnedPartition] = {}
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hotpath")
        # RocksDB writes of flushes: never queued behind a long listing or restore
        self.flush_executor = ThreadPoolExecutor(1, thread_name_prefix="flush")
        self.consumer: AIOKafkaConsumer | None = None
        self.seeks = Seeks()  # every seek of self.consumer goes through it
        self.drift = DriftWatch()
        self.running = asyncio.Event()  # the batch loop has started
        # unix time the first partition assignment was done (stores open and
        # restored, even if it gave this worker no partition); None before
        self.ready_at: float | None = None
        self.on_drift = None  # async callable, set by the app
        # CFOwner.apply_local, set by the app (cf_apply_local)
        self.cf_local = None
        # CFOwner.source_rebased, set by the app: a clicks log started over
        self.cf_rebase = None
        # True while the broker is away (set by the app: BrokerWatch)
        self.paused = lambda: False
        # clicks partitions whose log the broker lost, not read from the new start yet
        self.stale_logs: set[int] = set()
        self.flushes_begun = 0
        self.sweep_wanted = asyncio.Event()
        self.stalls = StallWatch(runtime.settings.stall_s)
        self.restart_wanted = asyncio.Event()  # set by the stall watch
        self.fetching = False  # the batch loop waits in getmany
        self.fetch_wait_ms: int | None = None  # raised by a consumer restart
        self._consume_task: asyncio.Task | None = None
        self.swept_users = 0
        self.sweep_changes = 0
        runtime.centres_listeners.append(lambda centres: self.sweep_wanted.set())
        # distances to new centres are a new level (a merge raises it), not a drift
        runtime.centres_listeners.append(lambda centres: self.drift.reset())

    # -- partitions ------------------------------------------------------------
    def _store_path(self, partition: int):
        s = self.runtime.settings
        return s.data_dir / s.app_id / f"users-p{partition}"

    async def open_partition(self, partition: int) -> OwnedPartition:
        """Open the local store of ``partition`` and bring it up to the changelog's end."""
        runtime = self.runtime
        store = await self.off_loop(
            UserPartitionStore, self._store_path(partition), runtime.engine.user_dtype(),
            runtime.settings.user_cache_rows,
        )  # fmt: skip
        before = store.next_offset
        restored = await self._restore(store, partition)
        # records in the changelog past this store's last flush: another worker
        # owned the partition since (even if it flushed no clicks: see _mark_taken)
        moved = restored > 0 or store.next_offset != before
        replay = self._replay_end(store, moved)
        logger.info(
            "clicks partition %d: %d users, next offset %d, replay to %d (%d changelog records)",
            partition, store.n_users, store.next_offset, replay, restored,
        )  # fmt: skip
        owned = OwnedPartition(partition, store, replay)
        if store.clean_offset == store.next_offset:
            await self._mark_taken(owned)
        return owned

    async def _mark_taken(self, owned: OwnedPartition) -> None:
        """Withdraw a clean hand-over's mark ("no output past next_offset")
        before this worker produces any: a flush of no rows with clean False,
        to the changelog and then the store. A worker that takes the partition
        later, after this one died before flushing, then sees records past the
        hand-over and replays click by click; with the mark left in place it
        would re-run those clicks in batches, and CF owners would drop or
        double what this worker had already sent for them. Call with
        ``self.lock`` held (as :meth:`flush`)."""
        await self.flush(owned)  # not clean; nothing is dirty yet

    def _replay_end(self, store: UserPartitionStore, moved: bool) -> int:
        """Clicks below this offset may have had their outputs produced already
        (before a crash): they are re-run with one CF delta per click.

        With this machine's store, the in-flight marker says exactly where the
        outputs stopped. A store brought forward from the changelog (another
        worker wrote it) only knows that at most two flushes' worth of clicks
        (the flush in flight and the clicks after it began, each at most
        ``flush_max_clicks`` plus a batch) ran after its last flush, unless that
        worker handed the partition over cleanly.
        """
        settings = self.runtime.settings
        if moved:
            if store.clean_offset == store.next_offset:
                return store.next_offset
            return store.next_offset + 2 * (settings.flush_max_clicks + settings.batch_size)
        marker = store.inflight()
        return marker + 1 if marker >= store.next_offset else store.next_offset

    async def _restore(self, store: UserPartitionStore, partition: int) -> int:
        """Apply the users changelog from the store's position to its end."""
        settings = self.runtime.settings
        topic = self.runtime.topics.changelog
        config = aiokafka_config(settings)
        ends = await high_watermarks_async(
            settings.bootstrap_servers, topic, [partition], embedded=settings.embedded_broker,
            client_config={k: v for k, v in config.items() if k != "bootstrap_servers"},
        )  # fmt: skip
        end = ends.get(partition, 0)
        if store.changelog_next >= end:
            return 0
        consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=16 << 20, **config,
        )  # fmt: skip
        await consumer.start()
        applied = 0
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, store.changelog_next)
            read = store.changelog_next
            flushes = CompleteFlushes()  # only whole flushes are applied
            while read < end:
                got = await consumer.getmany(tp, timeout_ms=500, max_records=50_000)
                msgs = got.get(tp, [])
                if not msgs:
                    continue
                read = msgs[-1].offset + 1
                records, position = flushes.feed((m.offset, m.key, m.value) for m in msgs)
                if position is not None:
                    applied += await self.off_loop(store.apply_changelog, records, position)
            if flushes.dropped or flushes.pending:
                logger.warning(
                    "clicks partition %d: %d changelog records of unfinished flushes ignored",
                    partition, flushes.dropped + len(flushes.pending),
                )  # fmt: skip
        finally:
            await consumer.stop()
        return applied

    async def off_loop(self, fn, *args):
        """Run long blocking work (opening and restoring stores, listing or
        digesting a whole partition) on a thread, so the event loop keeps
        answering. Per-batch work runs on the loop itself: handing it to a
        thread costs more in GIL hand-overs than it saves (a flush's RocksDB
        write, off the batches' path, goes to ``flush_executor``)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- the loop ----------------------------------------------------------------
    @mode.Service.task
    async def _consume(self) -> None:
        runtime = self.runtime
        settings = runtime.settings
        await runtime.items_ready.wait()
        started = time.perf_counter()
        # not during the first real batch
        await self.off_loop(warm_up, runtime.engine)
        await self.off_loop(load_kernels)
        await self.off_loop(load_fetch_kernels)
        logger.info("compiled kernels loaded in %.2fs", time.perf_counter() - started)
        self.consumer = batch_loop_consumer(settings, "clicks", lean=True)
        self.consumer.subscribe([runtime.topics.clicks], listener=_Listener(self))
        await self.consumer.start()
        # what exists now lives as long as the worker: keep it out of GC passes
        gc.collect()
        gc.freeze()
        self.running.set()
        self._consume_task = asyncio.current_task()
        try:
            while not self.should_stop:
                if self.paused():
                    await asyncio.sleep(0.1)  # the broker is away: see logs_new
                    continue
                if self.restart_wanted.is_set():
                    await self._restart_consumer()
                    continue
                seeks = self.seeks.snapshot()
                try:
                    self.fetching = True
                    got = await self._linger(
                        await self.consumer.getmany(
                            timeout_ms=settings.batch_wait_ms, max_records=settings.batch_size
                        )
                    )
                except asyncio.CancelledError:
                    # request_restart: a getmany waiting for an assignment never ends
                    if self.should_stop or not self.restart_wanted.is_set():
                        raise
                    asyncio.current_task().uncancel()
                    continue
                except OffsetOutOfRangeError as exc:
                    await self._log_moved(exc)
                    continue
                except NoOffsetForPartitionError as exc:
                    # assigned, not positioned yet: the listener's seek is on its way
                    self._seek_owned(exc.args)
                    continue
                finally:
                    self.fetching = False
                async with self.lock:
                    for tp, fetched in got.items():
                        owned = self.owned.get(tp.partition)
                        if owned is None or not len(fetched):
                            continue
                        if self.seeks.moved(seeks, tp.partition):
                            # fetched for the position before a seek (a rebase to a
                            # new log's start): read again from the next to apply
                            logger.debug(
                                "clicks partition %d: %d records fetched before a seek "
                                "dropped; reading again from %d",
                                tp.partition, len(fetched), owned.applied,
                            )  # fmt: skip
                            self.seeks.seek(self.consumer, tp, owned.applied)
                            continue
                        owned.highwater = self.consumer.highwater(tp) or owned.highwater
                        await self._handle_fetch(tp, owned, fetched)
                    for owned in list(self.owned.values()):
                        await self._flush_in_background(owned)
        finally:
            async with self.lock:
                for owned in self.owned.values():
                    await self.release(owned, "stop")
                self.owned.clear()
            await self.consumer.stop()
            self.executor.shutdown(wait=True)
            self.flush_executor.shutdown(wait=True)

    def request_restart(self) -> None:
        """Have the batch loop restart its consumer (see :meth:`_restart_consumer`),
        interrupting a getmany: aiokafka's waits without a time limit while the
        group reassigns partitions, which never ends if the rejoin does not."""
        self.restart_wanted.set()
        if self.fetching and self._consume_task is not None:
            self._consume_task.cancel()

    async def _restart_consumer(self) -> None:
        """A new clicks consumer (a stalled one: :mod:`stream.app.stallwatch`):
        the owned partitions are released cleanly, then assigned again. Its
        fetch wait is 5x the last one's (100 ms at least, 1500 at most): the
        embedded broker answers a fetch with no records at all once scanning
        its in-memory log takes longer than the fetch wait (README, Soak),
        which stalls the loop for good."""
        settings = self.runtime.settings
        was = self.fetch_wait_ms or (
            EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else settings.batch_wait_ms
        )
        self.fetch_wait_ms = min(max(5 * was, 100), MAX_FETCH_WAIT_MS)
        logger.warning(
            "restarting the clicks consumer with a fetch wait of %d ms (was %d)",
            self.fetch_wait_ms, was,
        )  # fmt: skip
        async with self.lock:
            for owned in list(self.owned.values()):
                await self.release(owned, "consumer restart")
            self.owned.clear()
        old, self.consumer = (
            self.consumer,
            batch_loop_consumer(
                settings, "clicks", lean=True, fetch_max_wait_ms=self.fetch_wait_ms
            ),
        )
        try:
            await old.stop()
        except Exception as exc:  # a broken consumer may not stop cleanly: it is dropped
            logger.warning("stopping the stalled clicks consumer failed: %r", exc)
        self.consumer.subscribe([self.runtime.topics.clicks], listener=_Listener(self))
        await self.consumer.start()
        self.restart_wanted.clear()

    @mode.Service.task
    async def _watch_stalls(self) -> None:
        """Finds and undoes a stalled batch loop (:mod:`stream.app.stallwatch`)."""
        settings = self.runtime.settings
        if settings.stall_s <= 0:
            return
        while not self.should_stop:
            await self.sleep(max(1.0, settings.stall_s / 4))
            if not self.ready() or self.paused():
                continue
            try:
                await check_stalls(self, self.stalls)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away or slow: the next look
                logger.warning("stall check failed: %r", exc)

    async def _linger(self, got: dict) -> dict[TopicPartition, FetchedRecords]:
        """Each partition's fetched records as one :class:`FetchedRecords`, a
        small fetch topped up: under a quarter of ``batch_size`` clicks wait
        ``batch_linger_ms`` for more. Under load the hot path then runs fewer,
        larger batches (every batch has a fixed cost, and sends one CF delta
        per cluster it touched); the price is up to that much latency."""
        settings = self.runtime.settings
        got = {tp: FetchedRecords.gather(parts) for tp, parts in got.items()}
        n = sum(map(len, got.values()))
        if n == 0 or n >= settings.batch_size // 4 or settings.batch_linger_ms <= 0:
            return got
        await asyncio.sleep(settings.batch_linger_ms / 1000)
        more = await self.consumer.getmany(timeout_ms=0, max_records=settings.batch_size - n)
        for tp, parts in more.items():
            earlier = [got[tp]] if tp in got else []
            got[tp] = FetchedRecords.gather([*earlier, *parts])
        return got

    async def logs_new(self) -> None:
        """The broker came back as a new cluster, without the logs (a restarted
        embedded broker): every clicks partition, owned now or taken later,
        is read from the new log's start instead of its old next offset, the
        users' state kept. Called while the loop is paused (no fetch of the
        new log was handled before this)."""
        async with self.lock:
            n = await self.runtime.producer.partitions(self.runtime.topics.clicks)
            self.stale_logs = set(range(n))
            for partition in list(self.owned):
                await self._rebase(self.owned[partition])

    async def _rebase(self, owned: OwnedPartition) -> None:
        """Read ``owned`` from its new log's start if its log is stale (see
        :meth:`logs_new`), and flush at once so that the store's next offset
        is the new log's too (a failed batch, or a restart, goes back there,
        not to an old offset the new log does not have or has for other
        clicks). Call with ``self.lock`` held."""
        if owned.partition not in self.stale_logs:
            return
        self.stale_logs.discard(owned.partition)
        try:
            # a flush of old offsets still in flight would write its next offset
            # after ours; a failed one puts the partition back to its last flush
            await self._settle(owned)
        except Exception:
            pass  # _settle logged it and recovered
        tp = TopicPartition(self.runtime.topics.clicks, owned.partition)
        start = await log_start(self.consumer, tp)
        logger.warning(
            "clicks partition %d: the broker came back without its logs: reading the new "
            "log from offset %d instead of %d; the users' state is kept",
            owned.partition, start, owned.applied,
        )  # fmt: skip
        owned.applied = owned.replay_until = start
        if self.cf_rebase is not None:
            self.cf_rebase(owned.partition)
        if tp in self.consumer.assignment():
            self.seeks.seek(self.consumer, tp, start)
        try:
            await self.flush(owned)
        except Exception as exc:
            # as _recover (back to the last flush), but reading the new log from its start
            logger.warning(
                "clicks partition %d: the flush at the new log's start failed: %r; the "
                "clicks not flushed before the loss are dropped", owned.partition, exc,
            )  # fmt: skip
            owned.store.reset()
            owned.pending, owned.flush_pending = [], []
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("clicks partition %d rebased: %s", owned.partition, self.positions())

    def _seek_owned(self, tps) -> None:
        for tp in tps:
            owned = self.owned.get(getattr(tp, "partition", -1))
            if owned is not None and tp in self.consumer.assignment():
                self.seeks.seek(self.consumer, tp, owned.applied)

    async def _log_moved(self, exc: OffsetOutOfRangeError) -> None:
        """A partition's next offset is not in its log any more: consume it
        from the log start, the users' state kept. Past the log's end, the
        log started over (its offsets no longer mean what they meant), so the
        local CF owner forgets its watermarks of the partition
        (``cf_rebase``); below its start (retention), they still hold."""
        moves = await log_start_after_out_of_range(self.consumer, exc, "clicks")
        async with self.lock:
            for tp, (asked, start) in moves.items():
                owned = self.owned.get(tp.partition)
                if owned is None or tp not in self.consumer.assignment():
                    continue
                owned.applied = owned.replay_until = start
                if asked >= start and self.cf_rebase is not None:
                    self.cf_rebase(tp.partition)
                self.seeks.seek(self.consumer, tp, start)

    async def release(self, owned: OwnedPartition, why: str) -> None:
        """Hand a partition over (``why``: "revoked" or "stop"): a clean flush, then
        the store is closed. A failed flush is logged, not raised: the next owner
        replays from the last flush. Call with ``self.lock`` held."""
        try:
            await self.flush(owned, clean=True)
        except Exception:
            logger.exception("flush of clicks partition %d (%s) failed", owned.partition, why)
        await self.off_loop(owned.store.close)
        logger.info("clicks partition %d released (%s)", owned.partition, why)

    async def _handle_fetch(
        self, tp: TopicPartition, owned: OwnedPartition, fetched: FetchedRecords
    ) -> None:
        """A partition's fetch (it may hold several batches' worth) in batches of
        at most ``batch_size`` clicks. It stops after a failed batch: the
        partition then consumes again from its last flush."""
        for msgs in fetched.pieces(self.runtime.settings.batch_size):
            await self._handle(tp, owned, msgs)
            if self.owned.get(tp.partition) is not owned or owned.applied <= msgs.offsets[-1]:
                return

    async def _handle(
        self, tp: TopicPartition, owned: OwnedPartition, msgs: FetchedRecords
    ) -> None:
        store = owned.store
        if len(msgs) and msgs.offsets[0] < owned.applied:  # offsets ascend: mostly none to drop
            msgs = msgs.since(owned.applied)
        if not len(msgs):
            return
        runtime = self.runtime
        settings = runtime.settings
        clock = _Stages(runtime.counters.stage_seconds)
        try:
            if owned.flushing is not None and (
                owned.flushing.done() or store.clicks_since_flush >= settings.flush_max_clicks
            ):
                await self._settle(owned)
                # at once, before this batch: a flush then never covers more
                # than flush_max_clicks plus a batch (see _replay_end)
                self._begin_flush(owned)
                clock.lap("flush")
            if store.room() < len(msgs):
                await self.flush(owned)  # the cache must not drop dirty rows
                clock.lap("flush")
            n_cf = await runtime.producer.partitions(runtime.topics.cf_deltas)
            result = self._compute(owned, msgs, n_cf)
            clock.add(result.seconds)
            clock.lap("compute_other")
            # no await from here to the outputs being queued: a failed output
            # seen now is replayed before anything is sent past it
            self._check_outputs(owned)
            store.mark_inflight(int(msgs.offsets[-1]))
            clock.lap("inflight")
            if result.local_cf is not None and self.cf_local is not None:
                # after the marker: a replay covers these clicks one by one
                first, last, delta, ts_max_of = result.local_cf
                self.cf_local(owned.partition, first, last, delta, partition_of_cf(n_cf), ts_max_of)
                clock.lap("cf_local")
            self._crash_point("before_outputs")
            topics = runtime.topics
            producer = runtime.producer
            owned.pending += producer.send_nowait(topics.clicks_dlq, result.dlq)
            owned.pending += producer.send_nowait(topics.assignments, result.assignments)
            owned.pending += producer.send_nowait(topics.cf_deltas, result.cf_deltas)
            clock.lap("produce_outputs")
            if self._crash_due("after_outputs"):
                await acked(owned.pending)
                self._crash_point("after_outputs")
            owned.applied = result.next_offset
            store.clicks_since_flush += len(msgs)
            if self._begin_flush(owned):
                clock.lap("flush")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "clicks partition %d: batch at offset %d failed; replaying from the last flush",
                tp.partition,
                msgs[0].offset,
            )
            await self._reset(owned)
            await asyncio.sleep(1.0)
            return
        c = runtime.counters
        c.events_applied += result.applied
        c.events_rejected += result.rejected
        if result.dlq_reasons:
            c.count_dead_letters(result.dlq_reasons)
        c.duplicates_dropped += result.duplicates
        c.unknown_items += result.unknown_items
        c.unassigned += result.unassigned
        c.assignments_emitted += len(result.assignments)
        c.cf_deltas_sent += len(result.cf_deltas)
        c.batches += 1
        if self._crash_due("stall_fetch", c.batches) or self._crash_due(
            "lose_assignment", c.batches
        ):
            self.add_future(self._stall_fault())
        seconds = clock.total()
        c.batch_seconds += seconds
        runtime.metrics.batch_duration.observe(seconds)
        if result.mean_distance is not None and self.drift.update(result.mean_distance):
            c.drift_detections += 1
            logger.warning("drift: assignment distance rose to %.3f", result.mean_distance)
            if self.on_drift is not None:
                self.add_future(self.on_drift())

    # -- idle users ---------------------------------------------------------------
    @mode.Service.task
    async def _expire(self) -> None:
        """Every ``user_ttl_check_s``, remove the users of each owned partition
        whose newest click is more than ``user_ttl_s`` older than the newest
        click of the partition (event time). Their records become tombstones
        at the next flush (changelog and RocksDB), their primary cluster's
        member count drops, and an assignment record with no memberships says
        they left. A removed user who clicks again starts from a blank record."""
        settings = self.runtime.settings
        if settings.user_ttl_s <= 0:
            return
        ttl_ms = int(settings.user_ttl_s * 1000)
        while not self.should_stop:
            await self.sleep(settings.user_ttl_check_s)
            if not self.ready():
                continue
            for partition in sorted(self.owned):
                owned = self.owned.get(partition)
                if owned is None:
                    continue
                try:
                    await self._expire_partition(owned, ttl_ms)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("expiry of clicks partition %d failed", partition)

    async def _expire_partition(self, owned: OwnedPartition, ttl_ms: int) -> None:
        async with self.lock:
            if self.owned.get(owned.partition) is not owned:
                return
            await self.flush(owned)  # the listing below reads RocksDB
        # on the executor that also closes the store: never at the same time
        ids, newest = await self.off_loop(owned.store.expiry_candidates, ttl_ms)
        expired = 0
        # a chunk at a time, batches running between: tens of thousands of users
        # at once held the loop (reads, records, sends) for most of a second
        chunk = min(EXPIRE_CHUNK, self.runtime.settings.user_cache_rows // 2)  # fits the cache
        for start in range(0, len(ids), chunk):
            async with self.lock:
                if self.owned.get(owned.partition) is not owned:
                    return
                expired += await self._expire_chunk(
                    owned, ids[start : start + chunk], newest, ttl_ms
                )
            await asyncio.sleep(0)
        if expired:
            logger.info(
                "clicks partition %d: %d users idle for over %.0fs expired",
                owned.partition, expired, ttl_ms / 1000,
            )  # fmt: skip

    async def _expire_chunk(self, owned: OwnedPartition, ids: list[str], newest: int, ttl_ms: int):
        """Expire those of ``ids`` still idle (they may have clicked since the
        listing); returns how many. Call with ``self.lock`` held."""
        runtime = self.runtime
        rows = owned.store.read_many(ids).rows
        idle = np.flatnonzero((rows["t_ms"] < newest - ttl_ms) & (rows["clicks"] > 0))
        if not len(idle):
            return 0
        if owned.store.room() < len(idle):
            await self.flush(owned)  # the cache must not drop dirty rows
        gone = [ids[i] for i in idle.tolist()]
        before_ids, before_scores = rows["cluster_ids"][idle], rows["scores"][idle]
        owned.store.expire(gone, before_ids[:, 0].copy())
        changes = AssignmentChanges(
            gone, before_ids, before_scores, np.full_like(before_ids, -1),
            np.zeros_like(before_scores), np.full(len(gone), newest, dtype=np.int64),
        )  # fmt: skip
        version = runtime.centres.version if runtime.centres is not None else 0
        records = assignment_records(changes, owned.partition, version, changes.ts)
        owned.pending += runtime.producer.send_nowait(runtime.topics.assignments, records)
        runtime.counters.users_expired += len(gone)
        runtime.counters.assignments_emitted += len(records)
        return len(gone)

    # -- the eager sweep after new centres ------------------------------------------
    @mode.Service.task
    async def _sweep(self) -> None:
        """Re-assign every owned user after a new centre set, a chunk at a time
        between batches, at most ``sweep_rate`` users per second."""
        settings = self.runtime.settings
        chunk = 1000
        while not self.should_stop:
            await self.sweep_wanted.wait()
            self.sweep_wanted.clear()
            centres = self.runtime.centres
            for partition in sorted(self.owned):
                owned = self.owned.get(partition)
                if owned is None:
                    continue
                async with self.lock:
                    if self.owned.get(partition) is not owned:
                        continue
                    try:
                        await self.flush(owned)  # so the listing has every user
                    except Exception:
                        logger.exception("sweep: flush of clicks partition %d failed", partition)
                        continue
                ids = await self.off_loop(owned.store.user_ids)
                for start in range(0, len(ids), chunk):
                    if self.should_stop or self.runtime.centres is not centres:
                        break  # a newer set: the next sweep covers it
                    began = time.monotonic()
                    async with self.lock:
                        if self.owned.get(partition) is not owned:
                            break  # revoked meanwhile
                        await self._sweep_chunk(owned, ids[start : start + chunk])
                    await asyncio.sleep(
                        max(chunk / settings.sweep_rate - (time.monotonic() - began), 0)
                    )
            logger.info("sweep done: %d users re-assigned to version %d, %d changed",
                        self.swept_users, centres.version, self.sweep_changes)  # fmt: skip

    async def _sweep_chunk(self, owned: OwnedPartition, user_ids: list[str]) -> None:
        runtime = self.runtime
        store = owned.store
        centres = runtime.centres
        state = EngineState(
            config=runtime.engine, users=store, items=runtime.items, centres=centres,
            first_clicks=runtime.first_clicks, learner=runtime.learner,
        )  # fmt: skip

        def work():
            changes = reassign(state, user_ids)
            store.stage_sizes(changes.before_ids[:, 0], changes.ids[:, 0])
            return changes

        try:
            if store.room() < len(user_ids):
                await self.flush(owned)
            changes = work()
            records = assignment_records(changes, owned.partition, centres.version, changes.ts)
            await runtime.producer.send(runtime.topics.assignments, records)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sweep of clicks partition %d failed", owned.partition)
            await self._reset(owned)
            return
        self.swept_users += len(user_ids)
        self.sweep_changes += len(changes)
        runtime.counters.assignments_emitted += len(records)

    def _flush_due(self, owned: OwnedPartition) -> bool:
        settings = self.runtime.settings
        store = owned.store
        clicks, dirty = store.clicks_since_flush, store.dirty_count
        if clicks >= settings.flush_max_clicks or dirty >= settings.flush_max_rows:
            return True
        waited = time.monotonic() - owned.flushed_at
        return (clicks > 0 or dirty > 0) and waited >= settings.flush_interval_s

    async def flush(self, owned: OwnedPartition, clean: bool = False) -> None:
        """Persist the partition now (after the flush in flight, if any); raises
        what the flush raised. Call with ``self.lock`` held."""
        await self._settle(owned)
        await self._finish_flush(owned, *self._take_flush(owned, clean))

    def _begin_flush(self, owned: OwnedPartition) -> bool:
        """Start a due flush, if none is in flight, that finishes while the next
        batches run; True when one was started."""
        if owned.flushing is not None or not self._flush_due(owned):
            return False
        owned.flushing = asyncio.ensure_future(self._finish_flush(owned, *self._take_flush(owned)))
        return True

    @staticmethod
    def _check_outputs(owned: OwnedPartition) -> None:
        """Raise if an output of the partition's unflushed clicks failed (their
        batch, or one before it, was not written): the caller then replays
        from the last flush instead of sending more behind the gap (a CF
        owner would drop the replayed deltas as older than later ones)."""
        failed = first_failed(owned.pending) or first_failed(owned.flush_pending)
        if failed is not None:
            raise RuntimeError(f"an output batch of unflushed clicks failed: {failure(failed)}")

    def _take_flush(self, owned: OwnedPartition, clean: bool = False):
        pending, owned.pending = owned.pending, []
        owned.flush_pending = pending
        records = owned.store.begin_flush(owned.applied, clean)
        owned.flushed_at = time.monotonic()
        self.flushes_begun += 1
        return records, pending, owned.applied, self.flushes_begun

    async def _finish_flush(
        self, owned: OwnedPartition, records: list, pending: list, next_offset: int, number: int
    ) -> None:
        """The outputs of the flushed clicks acked, then their rows and offsets to
        the users changelog, then to RocksDB in one WriteBatch, then the Kafka
        offset (for lag). The state is never persisted past an output not acked."""
        runtime = self.runtime
        started = time.perf_counter()
        await acked(pending)
        if owned.flush_pending is pending:
            owned.flush_pending = []
        # in chunks, so batches run between them instead of waiting for the whole
        acks = []
        for start in range(0, len(records), FLUSH_CHUNK):
            failed = first_failed(acks)
            if failed is not None:  # no later chunk may complete a flush cut short
                await acked([failed])  # raises what it raised
            chunk = records[start : start + FLUSH_CHUNK]
            acks += runtime.state_producer.send_nowait(
                runtime.topics.changelog, [(owned.partition, k, v) for k, v in chunk]
            )
            await asyncio.sleep(0)
        ends = [end for _, end in await acked(acks)]
        self._crash_point("after_changelog", number)
        await asyncio.get_running_loop().run_in_executor(
            self.flush_executor, owned.store.write_flush, max(ends) if ends else None
        )
        owned.store.end_flush()
        runtime.counters.flushes += 1
        runtime.counters.flush_rows += len(records)
        runtime.metrics.flush_duration.observe(time.perf_counter() - started)
        self._crash_point("after_commit", number)
        tp = TopicPartition(runtime.topics.clicks, owned.partition)
        if self.consumer is not None and tp in self.consumer.assignment():
            try:
                # aiokafka retries a retriable commit error without end: under a
                # rebalance (this may run in the revoke callback) that never ends
                await asyncio.wait_for(self.consumer.commit({tp: next_offset}), COMMIT_TIMEOUT_S)
            except Exception as exc:  # the store has the offset; Kafka's is for lag only
                logger.warning("clicks partition %d: offset commit failed: %r", tp.partition, exc)

    async def _settle(self, owned: OwnedPartition) -> None:
        """Wait for the partition's flush in flight, if any. A failed flush puts
        the partition back to its last flush (:meth:`_recover`) and is raised.
        A cancelled waiter leaves the flush running (it is shielded)."""
        task = owned.flushing
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except BaseException as exc:
            if not task.done():
                raise  # the waiter was cancelled, not the flush
            owned.flushing = None
            self._recover(owned, f"flush failed: {exc!r}")
            raise
        owned.flushing = None

    async def _flush_in_background(self, owned: OwnedPartition) -> None:
        """Between batches: collect a finished flush, start a due one."""
        try:
            if owned.flushing is not None and owned.flushing.done():
                await self._settle(owned)
            self._begin_flush(owned)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("clicks partition %d: flush failed", owned.partition)

    async def flush_all(self) -> None:
        """Flush every owned partition (callers hold ``self.lock``)."""
        for owned in list(self.owned.values()):
            await self.flush(owned)

    async def _reset(self, owned: OwnedPartition) -> None:
        """After a failed batch: back to the last flush, replaying like after a
        crash (after the flush in flight, whatever its outcome)."""
        try:
            await self._settle(owned)
        except Exception:
            return  # _settle recovered already (and the error was logged)
        self._recover(owned, "batch failed")

    def _recover(self, owned: OwnedPartition, why: str) -> None:
        """Drop everything after the last flush and consume again from there."""
        logger.warning(
            "clicks partition %d: %s; replaying from offset %d (the last flush)",
            owned.partition, why, owned.store.next_offset,
        )  # fmt: skip
        owned.store.reset()
        owned.pending = []  # their clicks are replayed with per-click CF deltas
        owned.flush_pending = []
        owned.applied = owned.store.next_offset
        owned.replay_until = max(owned.replay_until, self._replay_end(owned.store, moved=False))
        tp = TopicPartition(self.runtime.topics.clicks, owned.partition)
        if self.consumer is not None and tp in self.consumer.assignment():
            self.seeks.seek(self.consumer, tp, owned.applied)

    def _crash_due(self, point: str, number: int | None = None) -> bool:
        """``number``: of the flush at a flush's point, else the batch now running."""
        crash_at = self.runtime.settings.crash_at
        if number is None:
            number = self.runtime.counters.batches + 1
        return bool(crash_at) and crash_at == f"{point}:{number}"

    async def _stall_fault(self) -> None:
        """Fault injection for the stall tests, between two batches: the
        fetch stops (``stall_fetch``) or the assignment is lost (``lose_assignment``)."""
        async with self.lock:
            logger.warning("crash_at=%s: the clicks consumer stops", self.runtime.settings.crash_at)
            if self.runtime.settings.crash_at.startswith("stall_fetch"):
                self.consumer.pause(*self.consumer.assignment())
            else:
                self.consumer.unsubscribe()

    def _crash_point(self, point: str, number: int | None = None) -> None:
        """Fault injection for the crash tests (``crash_at="point:n"``)."""
        if self._crash_due(point, number):
            logger.critical("crash_at=%s: exiting now", self.runtime.settings.crash_at)
            os._exit(70)

    def _compute(
        self, owned: OwnedPartition, msgs: FetchedRecords, n_cf_partitions: int
    ) -> BatchResult:
        """Decode, process and encode one batch (runs on the hot-path thread)."""
        runtime = self.runtime
        topics = runtime.topics
        p = owned.partition
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        batch, rejects = decode_clicks(msgs)
        t1 = time.perf_counter()
        dlq = dlq_records(
            [(msgs[i].key, msgs[i].value, msgs[i].offset, reason) for i, reason in rejects],
            topics.clicks, p, now,
        )  # fmt: skip
        offsets = None  # of the accepted clicks; built only when needed (see below)
        if rejects:
            rejected = {i for i, _ in rejects}
            offsets = [o for i, o in enumerate(msgs.offsets.tolist()) if i not in rejected]
        centres = runtime.centres
        state = EngineState(
            config=runtime.engine, users=owned.store, items=runtime.items, centres=centres,
            first_clicks=runtime.first_clicks, learner=runtime.learner,
        )  # fmt: skip
        out = process_batch(state, batch)
        owned.store.stage_sizes(out.changes.before_ids[:, 0], out.changes.ids[:, 0])
        t2 = time.perf_counter()
        version = centres.version if centres is not None else 0
        assignments = assignment_records(out.changes, p, version, out.changes.ts)

        def ids_of(keys):
            rows = runtime.items.rows_for_keys(keys).tolist()
            if len(rows) < 2:
                return [runtime.items.ids[r] for r in rows]
            return list(operator.itemgetter(*rows)(runtime.items.ids))

        partition_of = partition_of_cf(n_cf_partitions)

        cf: list[Record] = []
        local_cf = None
        if len(batch):
            if offsets is None:  # every click accepted
                first, last = int(msgs.offsets[0]), int(msgs.offsets[-1])
            else:
                first, last = offsets[0], offsets[-1]
            if first < owned.replay_until:  # offsets ascend: some deltas may have been sent
                if offsets is None:
                    offsets = msgs.offsets.tolist()
                for i, delta in out.cf_delta_per_click(batch.ts, runtime.engine.cf_half_life_ms):
                    cf += cf_delta_records(
                        delta, ids_of, topics.clicks, p, offsets[i], offsets[i], partition_of
                    )
            else:
                ts_max_of = out.cluster_ts_max(batch.ts)
                cf = cf_delta_records(
                    out.cf_delta, ids_of, topics.clicks, p, first, last, partition_of, ts_max_of
                )
                local_cf = (first, last, out.cf_delta, ts_max_of)
        return BatchResult(
            dlq=dlq,
            assignments=assignments,
            cf_deltas=cf,
            applied=len(batch) - out.duplicates,
            rejected=len(rejects),
            duplicates=out.duplicates,
            unknown_items=out.unknown_items,
            unassigned=out.unassigned,
            mean_distance=out.mean_distance,
            next_offset=int(msgs.offsets[-1]) + 1,
            seconds={"decode": t1 - t0, "process": t2 - t1, "encode": time.perf_counter() - t2},
            local_cf=local_cf,
            dlq_reasons=tuple(reason for _, reason in rejects),
        )

    # -- reading the state ---------------------------------------------------------
    def ready(self) -> bool:
        """The batch loop runs and has had its first partition assignment."""
        return self.running.is_set() and self.ready_at is not None

    def unflushed(self) -> int:
        """Clicks applied but not flushed yet (to the changelog and RocksDB):
        what a crash would replay, and what readers of the changelog (an
        offline recompute) do not see yet."""
        return sum(max(o.applied - o.store.next_offset, 0) for o in self.owned.values())

    def lag(self) -> int:
        return sum(max(o.highwater - o.applied, 0) for o in self.owned.values())

    def positions(self) -> str:
        """Each owned partition's offsets, for DEBUG lines: next to apply,
        the consumer's position, high watermark, store's next offset, replay end."""
        parts = []
        for p, o in sorted(self.owned.items()):
            tp = TopicPartition(self.runtime.topics.clicks, p)
            position = _fetch_position(self.consumer, tp)
            parts.append(
                f"p{p} applied={o.applied} position={position} highwater={o.highwater} "
                f"stored={o.store.next_offset} replay_until={o.replay_until}"
            )
        return "; ".join(parts) or "no partitions"

    def users(self) -> int:
        return sum(len(o.store) for o in self.owned.values())


def _fetch_position(consumer: AIOKafkaConsumer | None, tp: TopicPartition):
    """The consumer's fetch position of ``tp`` without waiting (None if it has
    none, or "unassigned"); aiokafka's ``position`` waits for one instead."""
    subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    assignment = getattr(subscription, "assignment", None)
    if assignment is None or tp not in assignment.tps:
        return "unassigned"
    state = assignment.state_value(tp)
    return state.position if state.has_valid_position else None


def partition_of_cf(n_partitions: int):
    """cluster id -> its cf-deltas partition, for ``n_partitions`` partitions."""
    return lambda cid: cluster_partition(cid, n_partitions)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, hotpath: HotPath):
        self.hotpath = hotpath

    async def on_partitions_revoked(self, revoked) -> None:
        hp = self.hotpath
        async with hp.lock:  # waits for the batch in progress
            for tp in revoked:
                owned = hp.owned.pop(tp.partition, None)
                if owned is not None:
                    await hp.release(owned, "revoked")

    async def on_partitions_assigned(self, assigned) -> None:
        hp = self.hotpath
        hp.runtime.counters.rebalances += 1
        async with hp.lock:
            for tp in assigned:
                if tp.partition not in hp.owned:
                    hp.owned[tp.partition] = await hp.open_partition(tp.partition)
                hp.seeks.seek(hp.consumer, tp, hp.owned[tp.partition].applied)
                await hp._rebase(hp.owned[tp.partition])
        if hp.ready_at is None:
            hp.ready_at = time.time()
