"""One clicks partition's delivery protocol: nothing lost, nothing counted twice.

A :class:`ClicksPartition` owns everything of one clicks partition ``p`` that
the guarantee rests on: its RocksDB store (:class:`stream.app.stores.UserPartitionStore`),
the flush in flight, the *in-flight marker*, the *replay window* and the
local CF short cut. :class:`stream.app.hotpath.HotPath` only fetches, computes
(:func:`stream.app.compute.compute_batch`) and hands each batch to
:meth:`ClicksPartition.deliver`; :mod:`stream.app.restore` builds the object.

What is written when
--------------------
Per batch (clicks ``first..last``), in this order, with no await in between:

1. the batch is computed; its rows are *staged* in the store's write-back
   cache (dirty, not written), duplicate event ids dropped there;
2. :meth:`~ClicksPartition.check_outputs`: if an output of an unflushed
   batch failed, stop and replay from the last flush (nothing is sent past
   a gap: a CF owner would drop the replayed deltas as older than later ones);
3. the in-flight marker ``last`` is written to RocksDB (through the WAL; it
   only moves up);
4. clusters whose cf-deltas partition this worker owns get the batch's delta
   at once (``cf_local``, :meth:`stream.app.cfowner.CFOwner.apply_local`),
   with the source range ``first..last``;
5. dead letters, assignment changes and CF deltas (one record per cluster,
   source range ``first..last`` in a header) are queued, not awaited.

A flush (due by ``flush_interval_s``, ``flush_max_clicks`` or ``flush_max_rows``;
one at a time, finishing while the next batches run) takes the dirty rows and
the next offset ``n``, then: waits for the acks of every output queued before
it; produces ``m:flush``, the rows and the meta records (``m:next_offset = n``,
users, sizes, ``m:clean`` last) to the users changelog and waits for their
acks; writes the same records and the changelog position to RocksDB in one
WriteBatch; commits ``n`` to Kafka (for lag only: the store holds the offset).
So the store is never persisted past an output that was not acked, and the
changelog never holds a flush whose outputs were not acked.

Why a crash at any point is safe
--------------------------------
*Users state.* RocksDB holds the state after some flushed offset ``n``
completely or not at all (one WriteBatch). A restart consumes from ``n``:
clicks after it are applied again on that state, never twice. Flushes skip
RocksDB's WAL (the changelog, written first, is the log): a crash may take
the store back to an earlier flush, and opening the partition reads the
rest back from the changelog, whole flushes only
(:class:`stream.app.restore.CompleteFlushes`: rows of a flush cut short would
pair with the older next offset). Duplicate event ids are kept with the user
rows, so they are dropped the same way in a replay. The partition's part of
the item learner's sums (``l:`` rows, :mod:`stream.app.learnt`) is users
state too: written as totals in the same flush, added to the worker's
learner when the partition opens, taken out when it closes or goes back to
its last flush.

*Outputs of replayed clicks* may be produced twice. Assignment and
dead-letter records are idempotent for readers (the newest wins). CF deltas
add up, so they are de-duplicated by source offsets: the CF owner keeps, per
(source partition, cluster), the next source offset it applied (a
*watermark*) and drops a record starting below it. For this to be exact a
replayed click must never ride in a record whose range starts at or above a
range already applied: so clicks below :attr:`~ClicksPartition.replay_until`
are re-sent as one delta per click (first = last = its offset). With this
machine's store the marker (written before any output of its batch, step 3)
says how far outputs may have gone: ``replay_until = marker + 1``. A store
brought forward from the changelog (another worker wrote it) has no marker
of that worker; at most two flushes' worth of clicks ran after its last
flush (the flush in flight and the clicks after it began, each at most
``flush_max_clicks`` plus a batch: :meth:`~ClicksPartition.before_batch`
keeps that bound), so the window is that long, unless the worker before
handed over cleanly (``m:clean == m:next_offset``: no output past it).
A worker that takes a cleanly handed-over partition withdraws that mark
(:meth:`~ClicksPartition.mark_taken`) before it sends anything: otherwise a
third worker, after this one died unflushed, would trust the mark.

*The local CF short cut and the topic echo agree.* The local apply (step 4)
does not move the watermark; the record is still produced (the topic is the
tables' log) and skipped when it comes back because its range lies in a
range applied locally (the CF owner keeps those ranges, and snapshots them
with the table). Because the marker is written before the local apply, a
replay after a crash re-sends those clicks one by one, each inside the
locally applied range, so each is skipped; a later record retires the range.
A batch is never applied locally in a replay (``local_cf`` is None there),
nor when the cluster's watermark is past ``first`` (its record then meets
the watermark rule). See :mod:`stream.app.cfowner` for the owner's side.

*A failed batch or flush* is handled like a crash without the exit
(:meth:`~ClicksPartition.recover`): the cache is dropped, the partition
consumes again from the last flush, and the replay window grows to the marker.

Crash points for the tests (``crash_at="point:n"``, :class:`CrashPoints`):
``before_outputs`` / ``after_outputs`` (batch ``n``), ``after_changelog`` /
``after_commit`` (flush ``n``) sit at the steps they name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.app import learnt
from stream.app.compute import BatchResult, Stages, partition_of_cf
from stream.app.runtime import Runtime, acked, failure, first_failed
from stream.app.stores import UserPartitionStore
from stream.io.kafka import Seeks

logger = logging.getLogger(__name__)

FLUSH_CHUNK = 2000  # changelog records queued at a time by a flush
COMMIT_TIMEOUT_S = 5.0  # a Kafka offset commit given up after this (the store has the offset)

# CFOwner.apply_local: (source partition, first, last, delta, partition_of, ts_max_of,
# pairs, pairs_ts_max_of) -> int
LocalCF = Callable[..., int]


class CrashPoints:
    """Fault injection for the crash tests: ``crash_at="point:n"`` exits the
    process (code 70) when step ``point`` is reached for the ``n``-th time
    (batch ``n`` for a batch's points, flush ``n`` for a flush's)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def due(self, point: str, number: int | None = None) -> bool:
        """``number``: of the flush at a flush's point, else the batch now running."""
        crash_at = self.runtime.settings.crash_at
        if not crash_at:
            return False
        if number is None:
            number = self.runtime.counters.batches + 1
        return crash_at == f"{point}:{number}"

    def at(self, point: str, number: int | None = None) -> None:
        if self.due(point, number):
            logger.critical("crash_at=%s: exiting now", self.runtime.settings.crash_at)
            os._exit(70)


@dataclass
class Wiring:
    """What the clicks partitions of one worker share (built by the hot path)."""

    runtime: Runtime
    flush_executor: Executor  # RocksDB writes of flushes, off the event loop
    crashes: CrashPoints
    cf_local: LocalCF | None = None  # the CF owner's short cut, None when off
    consumer: Callable[[], AIOKafkaConsumer | None] = lambda: None  # the clicks consumer now
    seeks: Seeks = field(default_factory=Seeks)
    flushes_begun: int = 0  # numbers the flushes for the crash points


def replay_end(store: UserPartitionStore, moved: bool, flush_max_clicks: int, batch_size: int):
    """Clicks below this offset may have had their outputs produced already
    (before a crash): they are re-run with one CF delta per click. ``moved``:
    the changelog had records past this store's last flush (another worker
    owned the partition since). See the module doc."""
    if moved:
        if store.clean_offset == store.next_offset:
            return store.next_offset
        return store.next_offset + 2 * (flush_max_clicks + batch_size)
    marker = store.inflight()
    return marker + 1 if marker >= store.next_offset else store.next_offset


async def publish_learnt(runtime: Runtime, partition: int, records: list) -> None:
    """Publish a partition's learnt totals ``records`` ((key, value) as in the
    changelog) to the learnt-items topic, to the partition's own number, and
    wait for the acks (:mod:`stream.app.learnt`)."""
    if records and runtime.learnt_parts is not None:
        await acked(runtime.state_producer.send_nowait(
            runtime.topics.learnt, [(partition, k, v) for k, v in records]
        ))  # fmt: skip


class ClicksPartition:
    """A clicks partition this worker owns: its store, flush and replay window.

    Every method runs on the event loop, its caller holding the hot path's
    lock (the batch loop, a rebalance, a job that flushes); only a flush's
    RocksDB write runs on ``wiring.flush_executor``.
    """

    def __init__(
        self, partition: int, store: UserPartitionStore, replay_until: int, wiring: Wiring
    ):
        self.partition = partition
        self.store = store
        self.wiring = wiring
        self.replay_until = replay_until  # clicks below it get per-click CF deltas
        self.applied = store.next_offset  # next offset to apply (flushed or not)
        self.pending: list[asyncio.Future] = []  # acks of outputs not awaited yet
        self.flush_pending: list[asyncio.Future] = []  # those the flush in flight waits for
        self.highwater = 0
        self.flushed_at = time.monotonic()
        self.flushing: asyncio.Task | None = None  # the flush in flight, if any

    # -- a batch ------------------------------------------------------------------
    def must_wait(self, n_clicks: int) -> bool:
        """Whether the next batch of ``n_clicks`` must wait for a flush first
        (:meth:`before_batch`)."""
        flushing = self.flushing
        if flushing is not None and (
            flushing.done()
            or self.store.clicks_since_flush >= self.wiring.runtime.settings.flush_max_clicks
        ):
            return True
        return self.store.room() < n_clicks

    async def before_batch(self, n_clicks: int, clock: Stages) -> None:
        """Collect a finished flush, or wait for one that ``flush_max_clicks``
        clicks piled up behind, and start the next at once: a flush then never
        covers more than ``flush_max_clicks`` plus a batch (see :func:`replay_end`).
        Then flush now if the cache has no room for the batch (it must not drop
        dirty rows)."""
        if self.flushing is not None and (
            self.flushing.done()
            or self.store.clicks_since_flush >= self.wiring.runtime.settings.flush_max_clicks
        ):
            await self.settle()
            self.begin_flush()
            clock.lap("flush")
        if self.store.room() < n_clicks:
            await self.flush()
            clock.lap("flush")

    def deliver(self, result: BatchResult, n_clicks: int, n_cf: int, clock: Stages) -> None:
        """Steps 2-5 of the module doc for a computed batch of ``n_clicks``
        records (``n_cf`` cf-deltas partitions), then a due flush is begun.
        Raises before anything is sent if an earlier output failed."""
        runtime = self.wiring.runtime
        self.check_outputs()
        self.store.mark_inflight(result.next_offset - 1)
        clock.lap("inflight")
        cf_local = self.wiring.cf_local
        if result.local_cf is not None and cf_local is not None:
            first, last, delta, ts_max_of, pairs, pairs_ts = result.local_cf
            cf_local(
                self.partition, first, last, delta, partition_of_cf(n_cf), ts_max_of, pairs,
                pairs_ts,
            )  # fmt: skip
            clock.lap("cf_local")
        self.wiring.crashes.at("before_outputs")
        topics, producer = runtime.topics, runtime.producer
        self.pending += producer.send_nowait(topics.clicks_dlq, result.dlq)
        self.pending += producer.send_nowait(topics.assignments, result.assignments)
        self.pending += producer.send_nowait(topics.cf_deltas, result.cf_deltas)
        clock.lap("produce_outputs")
        self.applied = result.next_offset
        self.store.clicks_since_flush += n_clicks

    async def crash_after_outputs(self) -> None:
        """The ``after_outputs`` crash point: once the batch's outputs are acked."""
        await acked(self.pending)
        self.wiring.crashes.at("after_outputs")

    def check_outputs(self) -> None:
        """Raise if an output of the partition's unflushed clicks failed (their
        batch, or one before it, was not written): the caller then replays
        from the last flush instead of sending more behind the gap."""
        failed = first_failed(self.pending) or first_failed(self.flush_pending)
        if failed is not None:
            raise RuntimeError(f"an output batch of unflushed clicks failed: {failure(failed)}")

    # -- flushes --------------------------------------------------------------------
    def flush_due(self) -> bool:
        settings = self.wiring.runtime.settings
        clicks, dirty = self.store.clicks_since_flush, self.store.dirty_count
        if clicks >= settings.flush_max_clicks or dirty >= settings.flush_max_rows:
            return True
        waited = time.monotonic() - self.flushed_at
        return (clicks > 0 or dirty > 0) and waited >= settings.flush_interval_s

    def begin_flush(self) -> bool:
        """Start a due flush, if none is in flight, that finishes while the next
        batches run; True when one was started."""
        if self.flushing is not None or not self.flush_due():
            return False
        self.flushing = asyncio.ensure_future(self._finish_flush(*self._take_flush()))
        return True

    async def flush(self, clean: bool = False) -> None:
        """Persist the partition now (after the flush in flight, if any); raises
        what the flush raised. ``clean``: a hand-over, no output past this flush."""
        await self.settle()
        await self._finish_flush(*self._take_flush(clean))

    async def collect(self) -> None:
        """Between batches: collect a finished flush, start a due one; a failed
        flush is logged (the partition went back to its last flush)."""
        try:
            if self.flushing is not None and self.flushing.done():
                await self.settle()
            self.begin_flush()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("clicks partition %d: flush failed", self.partition)

    async def settle(self) -> None:
        """Wait for the flush in flight, if any. A failed flush puts the
        partition back to its last flush (:meth:`recover`) and is raised. A
        cancelled waiter leaves the flush running (it is shielded)."""
        task = self.flushing
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except BaseException as exc:
            if not task.done():
                raise  # the waiter was cancelled, not the flush
            self.flushing = None
            self.recover(f"flush failed: {exc!r}")
            raise
        self.flushing = None

    def _take_flush(self, clean: bool = False):
        pending, self.pending = self.pending, []
        self.flush_pending = pending
        records = self.store.begin_flush(self.applied, clean)
        self.flushed_at = time.monotonic()
        self.wiring.flushes_begun += 1
        return records, pending, self.applied, self.wiring.flushes_begun

    async def _finish_flush(
        self, records: list, pending: list, next_offset: int, number: int
    ) -> None:
        """The outputs of the flushed clicks acked, then their rows and offsets to
        the users changelog, then to RocksDB in one WriteBatch, then the Kafka
        offset (for lag). The state is never persisted past an output not acked."""
        runtime = self.wiring.runtime
        started = time.perf_counter()
        await acked(pending)
        if self.flush_pending is pending:
            self.flush_pending = []
        ends = await self._to_changelog(records)
        await publish_learnt(runtime, self.partition, self.store.flushing_learnt())
        self.wiring.crashes.at("after_changelog", number)
        await asyncio.get_running_loop().run_in_executor(
            self.wiring.flush_executor, self.store.write_flush, max(ends) if ends else None
        )
        self.store.end_flush()
        runtime.counters.flushes += 1
        runtime.counters.flush_rows += len(records)
        runtime.metrics.flush_duration.observe(time.perf_counter() - started)
        self.wiring.crashes.at("after_commit", number)
        await self._commit(next_offset)

    async def _to_changelog(self, records: list) -> list[int]:
        """Produce a flush's records to the users changelog; the end offsets."""
        runtime = self.wiring.runtime
        # in chunks, so batches run between them instead of waiting for the whole
        acks = []
        for start in range(0, len(records), FLUSH_CHUNK):
            failed = first_failed(acks)
            if failed is not None:  # no later chunk may complete a flush cut short
                await acked([failed])  # raises what it raised
            chunk = records[start : start + FLUSH_CHUNK]
            acks += runtime.state_producer.send_nowait(
                runtime.topics.changelog, [(self.partition, k, v) for k, v in chunk]
            )
            await asyncio.sleep(0)
        return [end for _, end in await acked(acks)]

    async def _commit(self, next_offset: int) -> None:
        consumer = self.wiring.consumer()
        tp = TopicPartition(self.wiring.runtime.topics.clicks, self.partition)
        if consumer is None or tp not in consumer.assignment():
            return
        try:
            # aiokafka retries a retriable commit error without end: under a
            # rebalance (this may run in the revoke callback) that never ends
            await asyncio.wait_for(consumer.commit({tp: next_offset}), COMMIT_TIMEOUT_S)
        except Exception as exc:  # the store has the offset; Kafka's is for lag only
            logger.warning("clicks partition %d: offset commit failed: %r", tp.partition, exc)

    # -- hand-overs and failures --------------------------------------------------------
    async def mark_taken(self) -> None:
        """Withdraw a clean hand-over's mark ("no output past next_offset")
        before this worker produces any: a flush of no rows with clean False,
        to the changelog and then the store (see the module doc)."""
        await self.flush()  # not clean; nothing is dirty yet

    async def release(self) -> None:
        """A clean flush (a hand-over: no output past it); raises what it raised."""
        await self.flush(clean=True)

    async def reset(self) -> None:
        """After a failed batch: back to the last flush, replaying like after a
        crash (after the flush in flight, whatever its outcome)."""
        try:
            await self.settle()
        except Exception:
            return  # settle recovered already (and the error was logged)
        self.recover("batch failed")

    def recover(self, why: str) -> None:
        """Drop everything after the last flush and consume again from there."""
        logger.warning(
            "clicks partition %d: %s; replaying from offset %d (the last flush)",
            self.partition, why, self.store.next_offset,
        )  # fmt: skip
        self._reset_store()
        self.pending = []  # their clicks are replayed with per-click CF deltas
        self.flush_pending = []
        self.applied = self.store.next_offset
        settings = self.wiring.runtime.settings
        end = replay_end(self.store, False, settings.flush_max_clicks, settings.batch_size)
        self.replay_until = max(self.replay_until, end)
        self.seek(self.applied)

    async def start_over(self, start: int) -> None:
        """The partition's log started over at ``start`` (the broker lost it):
        read from there, the users' state kept, and flush at once so that the
        store's next offset is the new log's too (a failed batch, or a
        restart, goes back there, not to an old offset the new log does not
        have or has for other clicks)."""
        self.applied = self.replay_until = start
        self.seek(start)
        try:
            await self.flush()
        except Exception as exc:
            # as recover (back to the last flush), but reading the new log from its start
            logger.warning(
                "clicks partition %d: the flush at the new log's start failed: %r; the "
                "clicks not flushed before the loss are dropped", self.partition, exc,
            )  # fmt: skip
            self._reset_store()
            self.pending, self.flush_pending = [], []
        try:  # the new learnt-items log has none of this partition's totals
            runtime = self.wiring.runtime
            await publish_learnt(runtime, self.partition, learnt.records(self.store.learnt_rows()))
        except Exception as exc:
            logger.warning(
                "clicks partition %d: publishing its learnt item sums to the new log failed: "
                "%r; the other workers keep the ones they hold", self.partition, exc,
            )  # fmt: skip

    def _reset_store(self) -> None:
        """The store back to its last flush, and the item learner with it."""
        learnt.take_out(self.wiring.runtime, self.store.unflushed_learnt())
        self.store.reset()

    def seek(self, offset: int) -> None:
        """Have the clicks consumer fetch from ``offset`` (if it holds the partition)."""
        consumer = self.wiring.consumer()
        tp = TopicPartition(self.wiring.runtime.topics.clicks, self.partition)
        if consumer is not None and tp in consumer.assignment():
            self.wiring.seeks.seek(consumer, tp, offset)
