"""A clicks partition whose log moved or started over, the users' state kept.

Two ways a partition's next offset stops meaning what it meant:

- the broker came back as a new cluster without its logs (a restarted
  embedded broker: :class:`stream.app.brokerwatch.BrokerWatch` calls
  :func:`logs_new`): every partition, owned now or taken later, is read from
  the new log's start and flushed there at once
  (:meth:`stream.app.partition.ClicksPartition.start_over`);
- a fetch is out of range (:func:`log_moved`): past the log's end the log
  was cut back or made anew (read on from its end), below its start
  retention removed records (read on from its start).

When the log started over, the local CF owner forgets its watermarks of the
partition (``cf_rebase``): the new log's offsets would otherwise be taken for
duplicates of the old log's.
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from stream.app.brokerwatch import log_start, resume_after_out_of_range
from stream.app.partition import ClicksPartition

logger = logging.getLogger(__name__)


async def logs_new(hotpath) -> None:
    """The broker lost every log: mark every clicks partition stale and rebase
    the owned ones. Called while the loop is paused (no fetch of the new log
    was handled before this)."""
    async with hotpath.lock:
        n = await hotpath.runtime.producer.partitions(hotpath.runtime.topics.clicks)
        hotpath.stale_logs = set(range(n))
        for partition in list(hotpath.owned):
            await rebase(hotpath, hotpath.owned[partition])


async def rebase(hotpath, owned: ClicksPartition) -> None:
    """Read ``owned`` from its new log's start if its log is stale. Call with
    the hot path's lock held."""
    if owned.partition not in hotpath.stale_logs:
        return
    hotpath.stale_logs.discard(owned.partition)
    try:
        # a flush of old offsets still in flight would write its next offset
        # after ours; a failed one puts the partition back to its last flush
        await owned.settle()
    except Exception:
        pass  # settle logged it and recovered
    tp = TopicPartition(hotpath.runtime.topics.clicks, owned.partition)
    start = await log_start(hotpath.consumer, tp)
    logger.warning(
        "clicks partition %d: the broker came back without its logs: reading the new "
        "log from offset %d instead of %d; the users' state is kept",
        owned.partition, start, owned.applied,
    )  # fmt: skip
    if hotpath.cf_rebase is not None:
        hotpath.cf_rebase(owned.partition)
    await owned.start_over(start)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("clicks partition %d rebased: %s", owned.partition, hotpath.positions())


async def log_moved(hotpath, exc: OffsetOutOfRangeError) -> None:
    """A partition's next offset is not in its log any more: consume it from
    where :func:`stream.app.brokerwatch.resume_offset` says. Past the log's end,
    offsets go back, so ``cf_rebase`` is told; below its start (retention), the
    watermarks still hold."""
    moves = await resume_after_out_of_range(hotpath.consumer, exc, "clicks")
    async with hotpath.lock:
        for tp, (asked, resume) in moves.items():
            owned = hotpath.owned.get(tp.partition)
            if owned is None or tp not in hotpath.consumer.assignment():
                continue
            owned.applied = owned.replay_until = resume
            if asked > resume and hotpath.cf_rebase is not None:
                hotpath.cf_rebase(tp.partition)
            hotpath.seeks.seek(hotpath.consumer, tp, resume)
