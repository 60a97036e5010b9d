"""The click hot path: a batch loop over the clicks topic, not a faust stream.

:class:`HotPath` is the loop over the clicks partitions this worker owns
(consumer group ``<app>-clicks``). Per fetched batch of one partition:

1. skip records below the partition's next offset to apply (already applied);
2. :func:`stream.app.compute.compute_batch`: decode, process on the
   partition's store (rows staged, not written), encode the outputs;
3. :meth:`stream.app.partition.ClicksPartition.deliver`: the in-flight
   marker, the local CF short cut, the outputs queued; a due flush begins
   and finishes while the next batches run.

The delivery guarantee ("nothing lost, nothing counted twice") and why a
crash at any step keeps it are in :mod:`stream.app.partition`; restoring a
partition at assignment is :mod:`stream.app.restore`. Around the loop: the
rebalance listener (open / release partitions), logs the broker lost or
moved (:mod:`stream.app.lostlogs`), a stalled consumer
(:mod:`stream.app.stallwatch`), idle-user expiry (:mod:`stream.app.expiry`),
the sweep after new centres (:mod:`stream.app.sweep`), and the stats.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from stream.app import learnt, lostlogs, restore
from stream.app.compute import BatchResult, Stages, compute_batch
from stream.app.expiry import expire_idle
from stream.app.memory import Trimmer, trim_loop
from stream.app.partition import ClicksPartition, CrashPoints, LocalCF, Wiring
from stream.app.runtime import Runtime
from stream.app.stallwatch import StallWatch, restart_consumer, stall_fault
from stream.app.stallwatch import watch as watch_stalls
from stream.app.sweep import sweep
from stream.app.trace import LatencyTrace, note_fetch
from stream.core.drift import DriftWatch
from stream.core.pipeline import warm_up
from stream.io.fetched import FetchedRecords
from stream.io.fetched import load_kernels as load_fetch_kernels
from stream.io.kafka import Seeks, batch_loop_consumer
from stream.wire.assignments import load_kernels

logger = logging.getLogger(__name__)


class HotPath(mode.Service):
    """Consumes the clicks topic in batches (consumer group ``<app>-clicks``).

    ``cf_local``: the CF owner's short cut for deltas of clusters it owns
    (:meth:`stream.app.cfowner.CFOwner.apply_local`), None to send every delta
    through the topic only; ``cf_rebase``: told when a clicks log started over
    (:meth:`stream.app.cfowner.CFOwner.source_rebased`).
    """

    def __init__(
        self,
        runtime: Runtime,
        cf_local: LocalCF | None = None,
        cf_rebase=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.runtime = runtime
        self.owned: dict[int, ClicksPartition] = {}
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hotpath")
        # RocksDB writes of flushes: never queued behind a long listing or restore
        self.flush_executor = ThreadPoolExecutor(1, thread_name_prefix="flush")
        self.consumer: AIOKafkaConsumer | None = None
        self.seeks = Seeks()  # every seek of self.consumer goes through it
        self.crashes = CrashPoints(runtime)
        self.wiring = Wiring(
            runtime, self.flush_executor, self.crashes, cf_local, lambda: self.consumer, self.seeks
        )
        self.cf_rebase = cf_rebase
        self.drift = DriftWatch()
        self.running = asyncio.Event()  # the batch loop has started
        # unix time the first partition assignment was done (stores open and
        # restored, even if it gave this worker no partition); None before
        self.ready_at: float | None = None
        self.on_drift = None  # async callable, set by the app
        # True while the broker is away (set by the app: BrokerWatch)
        self.paused = lambda: False
        # clicks partitions whose log the broker lost, not read from the new start yet
        self.stale_logs: set[int] = set()
        self.sweep_wanted = asyncio.Event()
        self.stalls = StallWatch(runtime.settings.stall_s)
        self.restart_wanted = asyncio.Event()  # set by the stall watch
        self.fetching = False  # the batch loop waits in getmany
        self.fetch_wait_ms: int | None = None  # raised by a consumer restart
        self._consume_task: asyncio.Task | None = None
        self.swept_users = 0
        self.sweep_changes = 0
        self.trimmer = Trimmer()
        # LatencyTrace rows of every fetch, kept when settings.trace_latency is
        # on: the soak splits click -> CF where getmany handed the clicks over
        self.fetched_trace = LatencyTrace(maxlen=1_000_000)
        self.fetched_at = 0.0  # unix time the last getmany returned
        runtime.centres_listeners.append(lambda centres: self.sweep_wanted.set())
        # distances to new centres are a new level (a merge raises it), not a drift
        runtime.centres_listeners.append(lambda centres: self.drift.reset())

    # -- partitions ------------------------------------------------------------
    async def open_partition(self, partition: int) -> ClicksPartition:
        """Open and restore ``partition`` (:func:`stream.app.restore.open_partition`)."""
        return await restore.open_partition(self.runtime, partition, self.wiring, self.executor)

    async def flush_all(self) -> None:
        """Flush every owned partition (callers hold ``self.lock``)."""
        for owned in list(self.owned.values()):
            await owned.flush()

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
        await runtime.items_ready.wait()
        started = time.perf_counter()
        # not during the first real batch
        await self.off_loop(warm_up, runtime.engine)
        await self.off_loop(load_kernels)
        await self.off_loop(load_fetch_kernels)
        logger.info("compiled kernels loaded in %.2fs", time.perf_counter() - started)
        self.consumer = batch_loop_consumer(runtime.settings, "clicks", lean=True)
        await self.subscribe()
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
                    await restart_consumer(self)
                    continue
                seeks = self.seeks.snapshot()
                got = await self._fetch()
                if got and runtime.settings.trace_latency:
                    note_fetch(self.fetched_trace, got, self.fetched_at)
                if got is not None:
                    async with self.lock:
                        await self._handle_got(got, seeks)
        finally:
            async with self.lock:
                for owned in self.owned.values():
                    await self.release(owned, "stop")
                self.owned.clear()
            await self.consumer.stop()
            self.executor.shutdown(wait=True)
            self.flush_executor.shutdown(wait=True)

    async def subscribe(self) -> None:
        """Subscribe ``self.consumer`` to the clicks topic and start it."""
        self.consumer.subscribe([self.runtime.topics.clicks], listener=_Listener(self))
        await self.consumer.start()

    async def _fetch(self) -> dict[TopicPartition, FetchedRecords] | None:
        """The next fetch, topped up (:meth:`_linger`); None after a fetch error
        that was handled (the loop then fetches again)."""
        settings = self.runtime.settings
        try:
            self.fetching = True
            got = await self.consumer.getmany(
                timeout_ms=settings.batch_wait_ms, max_records=settings.batch_size
            )
            self.fetched_at = time.time()
            return await self._linger(got)
        except asyncio.CancelledError:
            # request_restart: a getmany waiting for an assignment never ends
            if self.should_stop or not self.restart_wanted.is_set():
                raise
            asyncio.current_task().uncancel()
        except OffsetOutOfRangeError as exc:
            await lostlogs.log_moved(self, exc)
        except NoOffsetForPartitionError as exc:
            # assigned, not positioned yet: the listener's seek is on its way
            self._seek_owned(exc.args)
        finally:
            self.fetching = False
        return None

    async def _handle_got(self, got: dict, seeks) -> None:
        """Handle a fetch (``seeks``: the seek snapshot taken before it), then
        collect and begin flushes. Call with ``self.lock`` held."""
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
            await owned.collect()

    def request_restart(self) -> None:
        """Have the batch loop restart its consumer (:func:`stream.app.stallwatch.restart_consumer`),
        interrupting a getmany: aiokafka's waits without a time limit while the
        group reassigns partitions, which never ends if the rejoin does not."""
        self.restart_wanted.set()
        if self.fetching and self._consume_task is not None:
            self._consume_task.cancel()

    @mode.Service.task
    async def _watch_stalls(self) -> None:
        """Finds and undoes a stalled batch loop (:func:`stream.app.stallwatch.watch`)."""
        await watch_stalls(self)

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
        """The broker came back without its logs (:func:`stream.app.lostlogs.logs_new`)."""
        await lostlogs.logs_new(self)

    def _seek_owned(self, tps) -> None:
        for tp in tps:
            owned = self.owned.get(getattr(tp, "partition", -1))
            if owned is not None and tp in self.consumer.assignment():
                self.seeks.seek(self.consumer, tp, owned.applied)

    async def release(self, owned: ClicksPartition, why: str) -> None:
        """Hand a partition over (``why``: "revoked" or "stop"): a clean flush, then
        the store is closed. A failed flush is logged, not raised: the next owner
        replays from the last flush. Call with ``self.lock`` held. A cancelled
        caller does not cut it short: the flush's write, the learner's hand-over
        and the store's close run to their end in one shielded task."""
        await asyncio.shield(asyncio.ensure_future(self._release(owned, why)))

    async def _release(self, owned: ClicksPartition, why: str) -> None:
        try:
            await owned.release()
        except Exception:
            logger.exception("flush of clicks partition %d (%s) failed", owned.partition, why)
        got = await self.off_loop(owned.store.learnt_rows)
        learnt.close_partition(self.runtime, owned.partition, got)
        await self.off_loop(owned.store.close)
        logger.info("clicks partition %d released (%s)", owned.partition, why)

    async def _handle_fetch(
        self, tp: TopicPartition, owned: ClicksPartition, fetched: FetchedRecords
    ) -> None:
        """A partition's fetch (it may hold several batches' worth) in batches of
        at most ``batch_size`` clicks. It stops after a failed batch: the
        partition then consumes again from its last flush."""
        for msgs in fetched.pieces(self.runtime.settings.batch_size):
            await self._handle(tp, owned, msgs)
            if self.owned.get(tp.partition) is not owned or owned.applied <= msgs.offsets[-1]:
                return

    async def _handle(
        self, tp: TopicPartition, owned: ClicksPartition, msgs: FetchedRecords
    ) -> None:
        """One batch of ``owned``: compute it, then deliver it (see the module doc)."""
        if len(msgs) and msgs.offsets[0] < owned.applied:  # offsets ascend: mostly none to drop
            msgs = msgs.since(owned.applied)
        if not len(msgs):
            return
        runtime = self.runtime
        clock = Stages(runtime.counters.stage_seconds)
        try:
            if owned.must_wait(len(msgs)):
                await owned.before_batch(len(msgs), clock)
            n_cf = await runtime.producer.partitions(runtime.topics.cf_deltas)
            result = compute_batch(
                runtime, owned.partition, owned.store, owned.replay_until, msgs, n_cf
            )
            clock.add(result.seconds)
            clock.lap("compute_other")
            # no await from here to the outputs being queued: a failed output
            # seen now is replayed before anything is sent past it
            owned.deliver(result, len(msgs), n_cf, clock)
            if self.crashes.due("after_outputs"):
                await owned.crash_after_outputs()
            if owned.begin_flush():
                clock.lap("flush")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "clicks partition %d: batch at offset %d failed; replaying from the last flush",
                tp.partition,
                msgs[0].offset,
            )
            await owned.reset()
            await asyncio.sleep(1.0)
            return
        self._count(result, clock)

    def _count(self, result: BatchResult, clock: Stages) -> None:
        """A delivered batch's counters, crash points between batches and drift."""
        runtime = self.runtime
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
        if self.crashes.due("stall_fetch", c.batches) or self.crashes.due(
            "lose_assignment", c.batches
        ):
            self.add_future(stall_fault(self))
        seconds = clock.total()
        c.batch_seconds += seconds
        runtime.metrics.batch_duration.observe(seconds)
        if result.mean_distance is not None and self.drift.update(result.mean_distance):
            c.drift_detections += 1
            logger.warning("drift: assignment distance rose to %.3f", result.mean_distance)
            if self.on_drift is not None:
                self.add_future(self.on_drift())

    @mode.Service.task
    async def _expire(self) -> None:
        """Idle users out (:func:`stream.app.expiry.expire_idle`)."""
        await expire_idle(self)

    @mode.Service.task
    async def _trim(self) -> None:
        """Freed memory back to the system (:func:`stream.app.memory.trim_loop`)."""
        await trim_loop(self)

    # -- the eager sweep after new centres ------------------------------------------
    @mode.Service.task
    async def _sweep(self) -> None:
        """After each new centre set: :func:`stream.app.sweep.sweep`."""
        while not self.should_stop:
            await self.sweep_wanted.wait()
            self.sweep_wanted.clear()
            await sweep(self, self.runtime.centres)

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
                await lostlogs.rebase(hp, hp.owned[tp.partition])
        if hp.ready_at is None:
            hp.ready_at = time.time()
