"""The hot path's top-up of small fetches (no broker: only the merge logic)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from stream.app.hotpath import HotPath
from stream.settings import Settings


class _Consumer:
    """Hands out what a test queued, like ``getmany`` after the fetcher buffered it."""

    def __init__(self, later: dict):
        self.later = later
        self.asked: list[int] = []

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.asked.append(max_records)
        got, self.later = self.later, {}
        return got


def _linger(got: dict, later: dict, **settings) -> tuple[dict, _Consumer]:
    hotpath = HotPath.__new__(HotPath)  # only _linger's attributes
    hotpath.runtime = SimpleNamespace(settings=Settings(**settings))
    hotpath.consumer = _Consumer(later)
    return asyncio.run(hotpath._linger(got)), hotpath.consumer


def test_a_small_fetch_is_topped_up_in_order():
    merged, consumer = _linger(
        {"p0": [1, 2]}, {"p0": [3], "p1": [10]}, batch_size=100, batch_linger_ms=1
    )
    assert merged == {"p0": [1, 2, 3], "p1": [10]}
    assert consumer.asked == [98]  # never more than a batch in all


def test_a_full_enough_or_empty_fetch_and_linger_0_go_as_they_are():
    for got, settings in [
        ({"p0": list(range(25))}, {"batch_size": 100}),  # a quarter of the batch
        ({}, {"batch_size": 100}),  # nothing to top up
        ({"p0": [1]}, {"batch_size": 100, "batch_linger_ms": 0}),
    ]:
        merged, consumer = _linger(got, {"p0": [99]}, **settings)
        assert merged == got and consumer.asked == []
