"""The delivery protocol of one clicks partition, built directly (no broker:
a real RocksDB store in a tmp dir, producers that record what they were given)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from stream.app import learnt
from stream.app import partition as partition_module
from stream.app.compute import BatchResult, Stages
from stream.app.partition import ClicksPartition, CrashPoints, Wiring, replay_end
from stream.app.runtime import Runtime
from stream.app.stores import META_CLEAN, META_FLUSH_BEGIN, UserPartitionStore
from stream.core.centres import CentreSet
from stream.core.cf import CFDelta
from stream.core.pairs import PairDelta
from stream.settings import Settings


class _Log:
    """A producer that keeps what it is given, per topic, and acks it at once
    (``fail``: every send fails instead; ``hold``: acks wait for :meth:`release`)."""

    def __init__(self, fail: bool = False, hold: bool = False):
        self.topics: dict[str, list] = {}
        self.fail, self.hold = fail, hold
        self.held: list[tuple[asyncio.Future, tuple]] = []

    def send_nowait(self, topic: str, records) -> list[asyncio.Future]:
        if not records:
            return []
        future = asyncio.get_running_loop().create_future()
        log = self.topics.setdefault(topic, [])
        if self.fail:
            future.set_exception(TimeoutError("no ack"))
            log.extend(records)  # queued, never acked
            return [future]
        log.extend(records)
        result = (records[-1][0], len(log))
        if self.hold:
            self.held.append((future, result))
        else:
            future.set_result(result)
        return [future]

    def release(self) -> None:
        for future, result in self.held:
            future.set_result(result)
        self.held = []


@pytest.fixture
def make(tmp_path):
    """make(**settings) -> a ClicksPartition 0 on a fresh store, its runtime's
    producers replaced by :class:`_Log`s."""
    executors: list[ThreadPoolExecutor] = []
    stores: list[UserPartitionStore] = []

    def build(cf_local=None, **settings) -> ClicksPartition:
        runtime = Runtime.create(Settings(data_dir=tmp_path, dim=4, **settings))
        runtime.producer, runtime.state_producer = _Log(), _Log()
        store = UserPartitionStore(tmp_path / f"users-p{len(stores)}", runtime.engine.user_dtype())
        executor = ThreadPoolExecutor(1)
        executors.append(executor)
        stores.append(store)
        wiring = Wiring(runtime, executor, CrashPoints(runtime), cf_local)
        return ClicksPartition(0, store, store.next_offset, wiring)

    yield build
    for executor in executors:
        executor.shutdown()
    for store in stores:
        store.close()


def _dirty(part: ClicksPartition, n: int) -> None:
    """Stage ``n`` new users' rows (dirty until the next flush)."""
    store = part.store
    batch = store.read_many([f"u{i}" for i in range(n)])
    batch.rows["clicks"] = 1
    store.write_many(batch)


def _runtime(part: ClicksPartition) -> Runtime:
    return part.wiring.runtime


# -- when a flush is due ---------------------------------------------------------------
def _due(make, clicks: int, dirty: int, waited_s: float, **settings) -> bool:
    part = make(**settings)
    _dirty(part, dirty)
    part.store.clicks_since_flush = clicks
    part.flushed_at = time.monotonic() - waited_s
    return part.flush_due()


def test_a_flush_is_due_at_the_first_bound_reached(make):
    bounds = dict(flush_interval_s=5, flush_max_clicks=1000, flush_max_rows=100)
    assert not _due(make, 999, 99, 4.0, **bounds)
    assert _due(make, 1000, 1, 0.0, **bounds)  # clicks
    assert _due(make, 10, 100, 0.0, **bounds)  # dirty users: a million-user stream flushes often
    assert _due(make, 10, 5, 5.1, **bounds)  # time
    assert not _due(make, 0, 0, 60.0, **bounds)  # nothing to flush


def test_defaults_flush_hot_users_every_few_seconds_and_many_users_by_their_rows(make):
    s = Settings()
    assert (s.flush_interval_s, s.flush_max_clicks, s.flush_max_rows) == (5.0, 250_000, 25_000)
    assert not _due(make, 200_000, 10_000, 3.0)  # 10k hot users clicking 200k times: not yet
    assert _due(make, 30_000, 25_000, 0.5)  # 25k distinct users: now


# -- a flush --------------------------------------------------------------------------
def test_a_flush_waits_for_the_outputs_then_writes_the_changelog_then_the_store(make):
    part = make()
    _dirty(part, 3)
    part.applied = 10  # clicks 0..9 applied
    outputs = _Log(hold=True)
    _runtime(part).producer = outputs
    changelog = _runtime(part).state_producer.topics

    async def run():
        part.pending += outputs.send_nowait("assignments", [(0, b"k", b"v")])
        flush = asyncio.ensure_future(part.flush())
        for _ in range(5):
            await asyncio.sleep(0)
        # nothing persisted while an output of the flushed clicks is not acked
        assert changelog == {} and part.store.next_offset == 0 and not flush.done()
        outputs.release()
        await flush

    asyncio.run(run())
    records = changelog[_runtime(part).topics.changelog]
    keys = [key for _, key, _ in records]
    assert keys[0] == META_FLUSH_BEGIN and keys[-1] == META_CLEAN  # a whole flush
    assert sum(key.startswith(b"u:") for key in keys) == 3
    assert (part.store.next_offset, part.store.changelog_next) == (10, len(records))
    assert part.flush_pending == [] and part.store.dirty_count == 0


def test_a_flush_sends_no_changelog_chunk_behind_one_that_failed(make):
    """A flush's first chunk carries its begin marker: if it failed at once,
    the chunks after it must not go out (a restore would take them for a
    whole flush), and the store keeps its last flush."""
    part = make()
    _dirty(part, 3 * partition_module.FLUSH_CHUNK)
    part.applied = 7
    failing = _Log(fail=True)
    _runtime(part).state_producer = failing
    with pytest.raises(TimeoutError):
        asyncio.run(part.flush())
    (sent,) = failing.topics.values()
    assert len(sent) == partition_module.FLUSH_CHUNK
    assert part.store.next_offset == 0  # the store keeps its last flush


def test_a_failed_flush_in_flight_puts_the_partition_back_to_its_last_flush(make):
    part = make(flush_max_clicks=1)
    part.store.mark_inflight(41)
    _dirty(part, 5)
    part.applied = 42
    part.store.clicks_since_flush = 42
    _runtime(part).state_producer = _Log(fail=True)

    async def run():
        assert part.begin_flush() and not part.begin_flush()  # one at a time
        with pytest.raises(TimeoutError):
            await part.settle()

    asyncio.run(run())
    assert part.flushing is None and part.applied == 0  # consumed again from the last flush
    assert part.store.dirty_count == 0 and len(part.store) == 0  # the cache was dropped
    assert part.replay_until == 42  # clicks up to the marker are re-sent one by one


def _learn(part: ClicksPartition, item: str, clicks: float) -> None:
    """``clicks`` clicks on ``item`` by members of cluster 0, staged as a batch's."""
    runtime = _runtime(part)
    centres = CentreSet.create(np.eye(2, 4), created_at_ms=0)
    rows = runtime.items.rows_for([item])
    runtime.learner.learn(runtime.items, centres, rows, centres.ids[:1], np.array([clicks]))
    learnt.stage(runtime, part.store)


def test_a_partition_sent_back_to_its_last_flush_takes_its_unflushed_learnt_sums_out(make):
    part = make(item_learn_min_clicks=1, flush_max_clicks=1)
    runtime = _runtime(part)
    _learn(part, "x", 2.0)

    async def run():
        await part.flush()
        _learn(part, "x", 3.0)
        _learn(part, "y", 1.0)
        runtime.state_producer = _Log(fail=True)
        part.store.clicks_since_flush = 1
        assert part.begin_flush()
        with pytest.raises(TimeoutError):
            await part.settle()

    asyncio.run(run())
    assert runtime.learner.stats(runtime.items)["learnt_from_clicks"] == 2.0  # the flushed one
    # a fresh worker opening the store gets the same, and the vector at once
    other = Runtime.create(runtime.settings)
    assert learnt.add_partition(other, part.partition, part.store.learnt_rows()) == 1
    assert other.learner.stats(other.items)["learnt"] == 1
    np.testing.assert_allclose(other.items.vectors[0], [1, 0, 0, 0])


def test_a_failed_batch_takes_its_learnt_part_out_with_the_rows(make):
    part = make(item_learn_min_clicks=1)
    runtime = _runtime(part)
    _learn(part, "x", 2.0)

    async def run():
        await part.flush()
        _learn(part, "x", 1.0)  # a batch that then fails: staged, not delivered
        await part.reset()

    asyncio.run(run())
    assert runtime.learner.stats(runtime.items)["learnt_from_clicks"] == 2.0
    ids, values = part.store.learnt_rows()
    assert ids == ["x"] and values[:, 0].tolist() == [2.0]


def test_a_clean_hand_over_is_marked_and_the_next_owner_withdraws_the_mark(make):
    part = make()
    part.applied = 12
    asyncio.run(part.release())
    assert part.store.clean_offset == part.store.next_offset == 12
    asyncio.run(part.mark_taken())
    assert part.store.clean_offset == -1 and part.store.next_offset == 12


# -- the replay window -------------------------------------------------------------------
def test_the_replay_window_follows_the_marker_or_two_flushes_after_a_move(make):
    part = make()
    store = part.store
    part.applied = 100
    asyncio.run(part.flush())
    assert replay_end(store, False, 1000, 50) == 100  # no marker past the flush
    store.mark_inflight(149)
    assert replay_end(store, False, 1000, 50) == 150  # outputs up to the marker
    # another worker wrote the store: two flushes' worth, unless handed over cleanly
    assert replay_end(store, True, 1000, 50) == 100 + 2 * (1000 + 50)
    asyncio.run(part.release())
    assert replay_end(store, True, 1000, 50) == 100


# -- a batch ---------------------------------------------------------------------------
def _result(first: int, last: int, local: bool) -> BatchResult:
    delta = CFDelta(np.array([3]), np.array([7]), np.array([1.0]), 0, 0, 0)
    return BatchResult(
        dlq=[], assignments=[(0, b"u1", b"a")], cf_deltas=[(1, b"3", b"d")],
        applied=last - first + 1, rejected=0, duplicates=0, unknown_items=0, unassigned=0,
        mean_distance=None, next_offset=last + 1, seconds={},
        local_cf=(first, last, delta, {3: 0}, PairDelta.empty(), {}) if local else None,
    )  # fmt: skip


def test_a_batch_writes_its_marker_before_the_local_cf_and_its_outputs(make):
    seen = []

    def cf_local(source, first, last, delta, partition_of, ts_max_of, pairs, pairs_ts_max_of):
        # the marker is on disk before the local apply, and no output is queued yet
        seen.append((source, first, last, part.store.inflight(), len(part.pending)))
        return 1

    part = make(cf_local=cf_local)

    async def run():
        part.deliver(_result(0, 9, local=True), 10, 4, Stages({}))
        part.deliver(_result(10, 19, local=False), 10, 4, Stages({}))  # a replayed batch

    asyncio.run(run())
    assert seen == [(0, 0, 9, 9, 0)]
    assert part.store.inflight() == 19 and part.applied == 20
    assert part.store.clicks_since_flush == 20
    outputs = _runtime(part).producer.topics
    topics = _runtime(part).topics
    assert len(outputs[topics.assignments]) == 2 and len(outputs[topics.cf_deltas]) == 2


@pytest.mark.parametrize("where", ["pending", "flush_pending"])
@pytest.mark.parametrize("bad", ["failed", "cancelled"])
def test_a_failed_output_of_unflushed_clicks_stops_the_next_batch(make, where, bad):
    part = make(cf_local=lambda *args: pytest.fail("applied locally behind a failed output"))

    async def run():
        loop = asyncio.get_running_loop()
        ok, waiting, broken = (loop.create_future() for _ in range(3))
        ok.set_result((0, 1))
        part.pending = [ok, waiting]
        part.check_outputs()  # acked or in flight: go on
        if bad == "failed":
            broken.set_exception(TimeoutError("no ack"))
        else:
            broken.cancel()
        getattr(part, where).append(broken)
        with pytest.raises(RuntimeError, match="output batch of unflushed clicks failed"):
            part.deliver(_result(0, 9, local=True), 10, 4, Stages({}))

    asyncio.run(run())
    assert part.store.inflight() == -1 and part.applied == 0  # nothing moved, nothing sent
    assert _runtime(part).producer.topics == {}


def test_crash_points_name_a_step_and_its_number(make):
    part = make(crash_at="after_changelog:2")
    crashes = part.wiring.crashes
    assert crashes.due("after_changelog", 2)
    assert not crashes.due("after_changelog", 1) and not crashes.due("after_commit", 2)
    _runtime(part).counters.batches = 2
    assert not crashes.due("after_changelog")  # the batch now running is the third
    assert not make().wiring.crashes.due("after_changelog", 2)  # no crash_at: never


def test_a_partition_whose_log_started_over_publishes_all_its_learnt_totals_again(make):
    part = make(item_learn_min_clicks=1)
    runtime = _runtime(part)
    _learn(part, "x", 2.0)
    _learn(part, "y", 1.0)
    asyncio.run(part.flush())
    runtime.state_producer = _Log()  # the broker came back without its logs
    asyncio.run(part.start_over(0))
    sent = runtime.state_producer.topics[runtime.topics.learnt]
    assert sorted((p, k, np.frombuffer(v)[0]) for p, k, v in sent) == [
        (0, b"l:x", 2.0), (0, b"l:y", 1.0),
    ]  # fmt: skip


def test_a_flush_publishes_the_partitions_learnt_totals_and_another_worker_adds_them(make):
    part = make(item_learn_min_clicks=1)
    runtime = _runtime(part)
    _learn(part, "x", 2.0)
    asyncio.run(part.flush())
    _learn(part, "x", 3.0)
    _learn(part, "y", 1.0)
    asyncio.run(part.flush())
    sent = runtime.state_producer.topics[runtime.topics.learnt]
    # totals, not increments, each to the partition's own number
    assert [(p, k) for p, k, _ in sent] == [(0, b"l:x"), (0, b"l:x"), (0, b"l:y")]
    assert [np.frombuffer(v)[0] for _, _, v in sent] == [2.0, 5.0, 1.0]
    # a worker that does not own partition 0 reads them all, the last total of a key wins
    other = Runtime.create(runtime.settings)
    bad = (0, b"l:z", b"\0" * 8)  # another dim: skipped
    assert learnt.receive(other, [*sent, bad]) == 2
    assert other.learner.stats(other.items)["learnt_from_clicks"] == 6.0
    assert other.learnt_parts.own == set()
    # when partition 0 moves to it, the store's part replaces the published one
    learnt.add_partition(other, 0, part.store.learnt_rows())
    assert other.learner.stats(other.items)["learnt_from_clicks"] == 6.0
    learnt.close_partition(other, 0, part.store.learnt_rows())
    assert other.learner.stats(other.items)["learnt_from_clicks"] == 6.0
    assert other.learnt_parts.own == set()
