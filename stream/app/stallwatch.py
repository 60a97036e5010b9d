"""A hot path that stops applying clicks while its log grows: found, said, undone.

The clicks batch loop can stop making progress without any error: its
consumer's fetch of a partition stops (paused, a fetch position lost), the
consumer group leaves it without an assignment it still thinks it has, or an
await inside a batch or a flush never returns. Lag then grows forever on a
loop that looks idle. :class:`StallWatch` compares, every ``check_s``, each
owned partition's applied offset with its log end (asked of the broker, not
the consumer's own view, which stops with the fetch): a partition behind its
end that applied under half of what arrived in a window of ``stall_s``
(nothing, when nothing arrived) is stalled. Then, one step per ``stall_s``
while it lasts:

1. a paused fetch is resumed and re-positioned at the applied offset (``seek``);
2. else the clicks consumer is restarted (a new group member: the partitions
   are released cleanly and assigned again) with a longer fetch wait;
3. the process exits (code :data:`EXIT_STALLED`): the batch loop itself is
   stuck (it holds its lock). State and outputs are crash-safe by design
   (the store's offsets and the replay marker), so a supervisor's restart
   loses and doubles nothing.

Each step is logged in one WARNING line with what the loop knows of the
partition (the stacks of every task and thread at DEBUG) and counted
(``/stats`` ``stalls``). Each look also brings the partitions' log ends into
the hot path's lag figure, which otherwise only a fetch with records updates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

EXIT_STALLED = 75
MAX_FETCH_WAIT_MS = 1500  # the longest fetch wait a consumer restart sets


@dataclass
class _Seen:
    """The start of a partition's current window: applied offset, log end, time."""

    applied: int
    end: int
    since: float


@dataclass
class StallWatch:
    """Stall detection over ``(partition -> applied offset)`` and log ends.

    A window of ``stall_s`` in which a partition stayed behind its log end and
    applied under half of what arrived (nothing, when nothing arrived) is a
    stall: the embedded broker's empty fetches let a fetch through now and
    then (a third of the arrivals applied in the 30-minute soak). A worker
    that is only slow is restarted at most until its fetch wait is the
    longest (see :func:`check`), and never made to exit.

    >>> watch = StallWatch(stall_s=60.0)
    >>> watch.stalled({0: 10, 1: 5}, {0: 10, 1: 9}, now=0.0)
    []
    >>> watch.stalled({0: 10, 1: 5}, {0: 10, 1: 9}, now=61.0)  # 0 has nothing to read
    [1]
    >>> watch.window[1]  # seconds, applied, arrived
    (61.0, 0, 0)
    >>> watch.action(1, now=61.0), watch.action(1, now=90.0), watch.action(1, now=122.0)
    ('seek', None, 'restart')
    >>> watch.stalled({0: 10, 1: 9}, {0: 10, 1: 12}, now=123.0)  # 1 moved on: not stalled
    []
    >>> watch.stalled({0: 10, 1: 10}, {0: 10, 1: 120}, now=184.0)  # 1 of 100 arrived
    [1]
    >>> watch.action(1, now=184.0)  # a new stall starts over
    'seek'
    >>> watch.stalled({1: 60}, {1: 200}, now=245.0)  # slow (50 of 80): not stalled
    []
    >>> watch.stalled({1: 60}, {1: 200}, now=306.0), watch.action(1, 306.0, can_seek=False)
    ([1], 'restart')
    """

    stall_s: float
    seen: dict[int, _Seen] = field(default_factory=dict)
    # per partition: its last full window (seconds, clicks applied, clicks arrived)
    window: dict[int, tuple[float, int, int]] = field(default_factory=dict)
    # per stalled partition: the next step and when it may run
    steps: dict[int, tuple[int, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"seek": 0, "restart": 0, "exit": 0})

    def stalled(self, applied: dict[int, int], ends: dict[int, int], now: float) -> list[int]:
        """Partitions (sorted) whose window just ended as a stall; forgets
        partitions no longer owned."""
        out = []
        for partition in list(self.seen):
            if partition not in applied:
                del self.seen[partition]
                self.steps.pop(partition, None)
        for partition, offset in sorted(applied.items()):
            end = max(ends.get(partition, offset), offset)
            seen = self.seen.get(partition)
            if seen is None or end == offset:  # new, or nothing to read: not a stall
                self.seen[partition] = _Seen(offset, end, now)
                self.steps.pop(partition, None)
                continue
            if now - seen.since < self.stall_s:
                continue
            done, arrived = offset - seen.applied, end - seen.end
            self.window[partition] = (now - seen.since, done, arrived)
            self.seen[partition] = _Seen(offset, end, now)
            if 2 * done < max(arrived, 1):
                out.append(partition)
            else:
                self.steps.pop(partition, None)
        return out

    def action(self, partition: int, now: float, can_seek: bool = True) -> str | None:
        """The step due now for a stalled partition: "seek", "restart", "exit"
        (each at most once per ``stall_s``), None while the last one has its time.
        ``can_seek`` False (the consumer does not hold the partition): "restart" first.
        The caller counts (:attr:`counts`) the step it takes."""
        step, at = self.steps.get(partition, (0, now))
        if now < at:
            return None
        if step == 0 and not can_seek:
            step = 1
        name = ("seek", "restart", "exit")[min(step, 2)]
        self.steps[partition] = (step + 1, now + self.stall_s)
        return name


def stacks(tasks) -> str:
    """The stacks of ``tasks`` (asyncio) and of every thread, as text."""
    out = []
    for task in tasks:
        out.append(f"task {task.get_name()} ({'done' if task.done() else 'pending'}):")
        for frame in task.get_stack():
            out.extend(traceback.format_stack(frame, limit=1))
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.append(f"thread {names.get(ident, ident)}:")
        out.extend(traceback.format_stack(frame))
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def now() -> float:
    return time.monotonic()


async def check(hotpath, watch: StallWatch) -> None:
    """One look at ``hotpath``'s owned partitions (see the module doc)."""
    from aiokafka import TopicPartition

    runtime = hotpath.runtime
    settings = runtime.settings
    topic = runtime.topics.clicks
    applied = {p: o.applied for p, o in list(hotpath.owned.items())}
    if not applied or hotpath.restart_wanted.is_set():
        return  # nothing owned, or a restart under way
    ends = await _log_ends(settings, topic, hotpath.owned)
    at = now()
    for partition in watch.stalled(applied, ends, at):
        owned = hotpath.owned.get(partition)
        tp = TopicPartition(topic, partition)
        consumer = hotpath.consumer
        assigned = consumer is not None and tp in consumer.assignment()
        paused = assigned and tp in consumer.paused()
        busy = hotpath.lock.locked()
        # a fetch that is not paused but returns nothing needs a new consumer
        # (the embedded broker's empty answers: restart_consumer)
        step = watch.action(partition, at, can_seek=assigned and paused and not busy)
        if owned is None or step is None:
            continue
        seconds, done, arrived = watch.window[partition]
        if done and step != "seek" and (hotpath.fetch_wait_ms or 0) >= MAX_FETCH_WAIT_MS:
            continue  # slow, not stuck, and the fetch wait is the longest already
        if done and step == "exit":
            step = "restart"  # something was applied: the loop is not stuck
        logger.warning(
            "clicks partition %d: %d clicks applied in %.0fs while %d arrived, at offset %d, log "
            "end %d (assigned %s, fetch paused %s, flush in flight %s, batch loop busy %s): %s",
            partition, done, seconds, arrived, owned.applied, ends.get(partition, -1),
            assigned, paused, owned.flushing is not None, busy,
            {"seek": "fetching again from the applied offset",
             "restart": "restarting the clicks consumer",
             "exit": f"the batch loop is stuck: exiting ({EXIT_STALLED}) for a restart"}[step],
        )  # fmt: skip
        watch.counts[step] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("stacks:\n%s", stacks(asyncio.all_tasks()))
        if step == "seek":
            consumer.resume(tp)
            hotpath.seeks.seek(consumer, tp, owned.applied)  # a fetch made before is dropped
        elif step == "restart":
            hotpath.request_restart()
            return  # every partition is assigned again
        else:
            logging.shutdown()
            os._exit(EXIT_STALLED)


async def _log_ends(settings, topic: str, owned: dict) -> dict[int, int]:
    """The log end (high watermark) of each partition of ``owned`` (partition
    -> an object with ``highwater``), asked of the broker; each one's
    ``highwater`` (its lag figure) is raised to it."""
    from stream.io.embedded_broker_workarounds import high_watermarks_async
    from stream.io.kafka import aiokafka_config

    config = aiokafka_config(settings)
    ends = await high_watermarks_async(
        settings.bootstrap_servers, topic, sorted(owned), embedded=settings.embedded_broker,
        client_config={k: v for k, v in config.items() if k != "bootstrap_servers"},
    )  # fmt: skip
    for partition, end in ends.items():
        part = owned.get(partition)
        if part is not None:
            part.highwater = max(part.highwater, end)
    return ends


async def check_cf(owner, watch: StallWatch) -> None:
    """One look at the CF owner's cf-deltas partitions, by the same windows as
    the clicks loop's. The CF loop has no consumer restart of its own: a
    stalled partition is fetched again from its next offset (twice, one
    ``stall_s`` apart), then the process exits (:data:`EXIT_STALLED`; the CF
    tables are snapshots with their watermarks, so a restart neither loses
    nor doubles a delta). A partition that applied something is slow, not
    stuck: it is fetched again, never made to exit."""
    from aiokafka import TopicPartition

    runtime = owner.runtime
    topic = runtime.topics.cf_deltas
    consumer = owner.consumer
    applied = {p: part.next_offset for p, part in list(owner.owned.items())}
    if not applied or consumer is None or owner.lock.locked():
        return  # nothing owned, or a batch or snapshot under way: the next look
    ends = await _log_ends(runtime.settings, topic, owner.owned)
    at = now()
    for partition in watch.stalled(applied, ends, at):
        part = owner.owned.get(partition)
        tp = TopicPartition(topic, partition)
        assigned = tp in consumer.assignment()
        step = watch.action(partition, at)
        if part is None or step is None:
            continue
        seconds, done, arrived = watch.window[partition]
        step = "seek" if step == "restart" or (step == "exit" and done) else step
        if not assigned:
            step = "exit"  # the group left it to nobody: a new process joins again
        watch.counts[step] += 1
        logger.warning(
            "cf-deltas partition %d: %d deltas applied in %.0fs while %d arrived, at offset %d, "
            "log end %d (assigned %s): %s",
            partition, done, seconds, arrived, part.next_offset, ends.get(partition, -1),
            assigned,
            "fetching again from the next offset" if step == "seek"
            else f"the CF loop is stuck: exiting ({EXIT_STALLED}) for a restart",
        )  # fmt: skip
        if step == "seek":
            consumer.resume(tp)
            owner.seeks.seek(consumer, tp, part.next_offset)  # a fetch made before is dropped
        else:
            logging.shutdown()
            os._exit(EXIT_STALLED)


async def watch(loop, check_once=check) -> None:
    """Every ``stall_s / 4`` (a second at least), ``check_once(loop, loop.stalls)``
    (:func:`check` for the hot path, :func:`check_cf` for the CF owner); until
    ``loop`` stops. Nothing when ``stall_s`` is 0."""
    settings = loop.runtime.settings
    if settings.stall_s <= 0:
        return
    while not loop.should_stop:
        await loop.sleep(max(1.0, settings.stall_s / 4))
        ready = getattr(loop, "ready", lambda: True)
        if not ready() or loop.paused():
            continue
        try:
            await check_once(loop, loop.stalls)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is away or slow: the next look
            logger.warning("stall check failed: %r", exc)


async def restart_consumer(hotpath) -> None:
    """A new clicks consumer for ``hotpath`` (step 2): the owned partitions are
    released cleanly, then assigned again. Its fetch wait is 5x the last
    one's (100 ms at least, :data:`MAX_FETCH_WAIT_MS` at most): the embedded
    broker answers a fetch with no records at all once scanning its in-memory
    log takes longer than the fetch wait (README, Soak), which stalls the
    loop for good."""
    from stream.io.embedded_broker_workarounds import EMBEDDED_FETCH_MAX_WAIT_MS
    from stream.io.kafka import batch_loop_consumer

    settings = hotpath.runtime.settings
    was = hotpath.fetch_wait_ms or (
        EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else settings.batch_wait_ms
    )
    hotpath.fetch_wait_ms = min(max(5 * was, 100), MAX_FETCH_WAIT_MS)
    logger.warning(
        "restarting the clicks consumer with a fetch wait of %d ms (was %d)",
        hotpath.fetch_wait_ms, was,
    )  # fmt: skip
    async with hotpath.lock:
        for owned in list(hotpath.owned.values()):
            await hotpath.release(owned, "consumer restart")
        hotpath.owned.clear()
    old, hotpath.consumer = (
        hotpath.consumer,
        batch_loop_consumer(settings, "clicks", lean=True, fetch_max_wait_ms=hotpath.fetch_wait_ms),
    )
    try:
        await old.stop()
    except Exception as exc:  # a broken consumer may not stop cleanly: it is dropped
        logger.warning("stopping the stalled clicks consumer failed: %r", exc)
    await hotpath.subscribe()
    hotpath.restart_wanted.clear()


async def cf_stall_fault(owner) -> None:
    """Fault injection for the CF stall test: the CF loop's fetch stops
    (``crash_at="cf_stall_fetch:n"``, after its n-th batch of records)."""
    async with owner.lock:
        logger.warning("crash_at=%s: the cf-deltas consumer stops", owner.runtime.settings.crash_at)
        owner.consumer.pause(*owner.consumer.assignment())


async def stall_fault(hotpath) -> None:
    """Fault injection for the stall tests, between two batches: the fetch
    stops (``crash_at="stall_fetch:n"``) or the assignment is lost
    (``lose_assignment:n``)."""
    async with hotpath.lock:
        crash_at = hotpath.runtime.settings.crash_at
        logger.warning("crash_at=%s: the clicks consumer stops", crash_at)
        if crash_at.startswith("stall_fetch"):
            hotpath.consumer.pause(*hotpath.consumer.assignment())
        else:
            hotpath.consumer.unsubscribe()
