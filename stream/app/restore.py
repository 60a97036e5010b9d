"""Restore: a clicks partition's state rebuilt at assignment.

:func:`open_partition` opens the partition's local store, applies the users
changelog from the store's changelog position to its end (whole flushes
only: :class:`CompleteFlushes`), works out the replay window
(:func:`stream.app.partition.replay_end`) and, after a clean hand-over,
withdraws its mark before this worker sends anything
(:meth:`stream.app.partition.ClicksPartition.mark_taken`). Why each step is
needed is in :mod:`stream.app.partition`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import Executor

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.app import learnt
from stream.app.partition import ClicksPartition, Wiring, publish_learnt, replay_end
from stream.app.runtime import Runtime
from stream.app.stores import META_CLEAN, META_FLUSH_BEGIN, UserPartitionStore
from stream.io.embedded_broker_workarounds import EMBEDDED_FETCH_MAX_WAIT_MS, high_watermarks_async
from stream.io.kafka import aiokafka_config

logger = logging.getLogger(__name__)


class CompleteFlushes:
    """Cuts users-changelog records into whole flushes, for a restore.

    A flush is several produce batches: a crash can leave part of one on the
    changelog. Applying its rows without its meta records would pair them
    with the previous next offset (clicks applied twice), so only whole
    flushes are applied: from a :data:`~stream.app.stores.META_FLUSH_BEGIN`
    record to the :data:`~stream.app.stores.META_CLEAN` record that ends the
    meta. Rows of a flush that never ended are dropped when the next one
    begins, or left pending at the end.

    >>> cut = CompleteFlushes()
    >>> cut.feed([(0, META_FLUSH_BEGIN, b""), (1, b"u:a", b"1"), (2, META_CLEAN, b"")])
    ([(b'm:flush', b''), (b'u:a', b'1'), (b'm:clean', b'')], 3)
    >>> cut.feed([(3, META_FLUSH_BEGIN, b""), (4, b"u:b", b"2")])  # cut off by a crash
    ([], None)
    >>> cut.feed([(5, META_FLUSH_BEGIN, b""), (6, b"u:c", b"3"), (7, META_CLEAN, b"")])[1]
    8
    >>> cut.dropped, cut.pending
    (2, [])
    """

    def __init__(self):
        self.pending: list[tuple[bytes, bytes | None]] = []
        self.dropped = 0

    def feed(
        self, records: Iterable[tuple[int, bytes, bytes | None]]
    ) -> tuple[list[tuple[bytes, bytes | None]], int | None]:
        """(offset, key, value) in log order -> the records of the flushes they
        complete and the offset after the last of those (None: none completed)."""
        complete: list[tuple[bytes, bytes | None]] = []
        position = None
        for offset, key, value in records:
            if key == META_FLUSH_BEGIN and self.pending:
                self.dropped += len(self.pending)
                self.pending = []
            self.pending.append((key, value))
            if key == META_CLEAN:
                complete.extend(self.pending)
                self.pending = []
                position = offset + 1
        return complete, position


def store_path(runtime: Runtime, partition: int):
    s = runtime.settings
    return s.data_dir / s.app_id / f"users-p{partition}"


async def open_partition(
    runtime: Runtime, partition: int, wiring: Wiring, executor: Executor
) -> ClicksPartition:
    """Open the local store of ``partition`` and bring it up to the changelog's
    end; long blocking work runs on ``executor``. Call with the hot path's lock held."""
    loop = asyncio.get_running_loop()
    settings = runtime.settings
    store = await loop.run_in_executor(
        executor, UserPartitionStore, store_path(runtime, partition), runtime.engine.user_dtype(),
        settings.user_cache_rows,
    )  # fmt: skip
    before = store.next_offset
    restored = await restore_changelog(runtime, store, partition, executor)
    # records in the changelog past this store's last flush: another worker
    # owned the partition since (even if it flushed no clicks: see mark_taken)
    moved = restored > 0 or store.next_offset != before
    replay = replay_end(store, moved, settings.flush_max_clicks, settings.batch_size)
    owned = ClicksPartition(partition, store, replay, wiring)
    if store.clean_offset == store.next_offset:
        await owned.mark_taken()
    # last: a partition that failed to open never held a part of the sums
    taught = await loop.run_in_executor(executor, store.learnt_rows)
    # its totals again: the last ones published may hold clicks not flushed
    await publish_learnt(runtime, partition, learnt.records(taught))
    installed = learnt.add_partition(runtime, partition, taught)
    logger.info(
        "clicks partition %d: %d users, next offset %d, replay to %d (%d changelog records); "
        "learnt sums of %d items, %d vectors installed",
        partition, store.n_users, store.next_offset, replay, restored, len(taught[0]), installed,
    )  # fmt: skip
    return owned


async def restore_changelog(
    runtime: Runtime, store: UserPartitionStore, partition: int, executor: Executor
) -> int:
    """Apply the users changelog from the store's position to its end; returns
    the records applied."""
    settings = runtime.settings
    topic = runtime.topics.changelog
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
    loop = asyncio.get_running_loop()
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
                applied += await loop.run_in_executor(
                    executor, store.apply_changelog, records, position
                )
        if flushes.dropped or flushes.pending:
            logger.warning(
                "clicks partition %d: %d changelog records of unfinished flushes ignored",
                partition, flushes.dropped + len(flushes.pending),
            )  # fmt: skip
    finally:
        await consumer.stop()
    return applied
