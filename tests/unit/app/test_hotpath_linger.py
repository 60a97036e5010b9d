"""The hot path's top-up of small fetches and its cut of a fetch into batches
(no broker: a hot path that is never started, its consumer replaced)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from stream.app.hotpath import HotPath
from stream.app.partition import ClicksPartition
from stream.app.runtime import Runtime
from stream.app.stores import UserPartitionStore
from stream.io.fetched import FetchedRecords
from stream.settings import Settings


def fetched(*offsets: int) -> FetchedRecords:
    """A fetch's records as the lean consumer returns them (one part)."""
    return FetchedRecords.from_records([(o, None, b"v%d" % o) for o in offsets])


class _Consumer:
    """Hands out what a test queued, like ``getmany`` after the fetcher buffered it."""

    def __init__(self, later: dict):
        self.later = later
        self.asked: list[int] = []

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.asked.append(max_records)
        got, self.later = self.later, {}
        return got


@pytest.fixture
def make(tmp_path):
    """make(**settings) -> a HotPath that is never started."""
    made: list[HotPath] = []

    def build(**settings) -> HotPath:
        made.append(HotPath(Runtime.create(Settings(data_dir=tmp_path, dim=4, **settings))))
        return made[-1]

    yield build
    for hotpath in made:
        hotpath.executor.shutdown()
        hotpath.flush_executor.shutdown()


def _linger(make, got: dict, later: dict, **settings) -> tuple[dict, _Consumer]:
    hotpath = make(**settings)
    hotpath.consumer = _Consumer(later)
    merged = asyncio.run(hotpath._linger(got))
    assert all(type(r) is FetchedRecords for r in merged.values())
    return {tp: [(r.offset, r.value) for r in rs] for tp, rs in merged.items()}, hotpath.consumer


def _pairs(*offsets: int) -> list[tuple]:
    return [(o, b"v%d" % o) for o in offsets]


def test_a_small_fetch_is_topped_up_in_order(make):
    merged, consumer = _linger(
        make,
        {"p0": [fetched(1, 2)]},
        {"p0": [fetched(3)], "p1": [(10, None, b"v10")]},  # a record of the general path
        batch_size=100,
        batch_linger_ms=1,
    )
    assert merged == {"p0": _pairs(1, 2, 3), "p1": _pairs(10)}
    assert consumer.asked == [98]  # never more than a batch in all


def test_a_full_enough_or_empty_fetch_and_linger_0_go_as_they_are(make):
    for got, settings in [
        ({"p0": [fetched(*range(25))]}, {"batch_size": 100}),  # a quarter of the batch
        ({}, {"batch_size": 100}),  # nothing to top up
        ({"p0": [fetched(1)]}, {"batch_size": 100, "batch_linger_ms": 0}),
    ]:
        merged, consumer = _linger(make, got, {"p0": [fetched(99)]}, **settings)
        expected = {tp: _pairs(*parts[0].offsets.tolist()) for tp, parts in got.items()}
        assert merged == expected and consumer.asked == []


def test_a_fetch_goes_in_batches_and_stops_after_a_failed_one(make, tmp_path):
    hotpath = make(batch_size=4)
    store = UserPartitionStore(tmp_path / "users-p0", hotpath.runtime.engine.user_dtype())
    tp = TopicPartition(hotpath.runtime.topics.clicks, 0)
    handled: list[list[int]] = []

    def run(fail_at: int | None) -> list[list[int]]:
        owned = ClicksPartition(0, store, 0, hotpath.wiring)
        hotpath.owned = {0: owned}
        handled.clear()

        async def handle(tp, owned, msgs):  # in place of compute and deliver
            handled.append(msgs.offsets.tolist())
            # a failed batch sends the partition back to its last flush (offset 2)
            owned.applied = 2 if len(handled) == fail_at else int(msgs.offsets[-1]) + 1

        hotpath._handle = handle
        asyncio.run(hotpath._handle_fetch(tp, owned, fetched(*range(10))))
        return handled

    assert run(fail_at=None) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert run(fail_at=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # nothing past the failed batch
    store.close()
