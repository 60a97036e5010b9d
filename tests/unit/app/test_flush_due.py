"""When the hot path flushes a partition (no broker: only the rule)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from stream.app.hotpath import HotPath
from stream.settings import Settings


def _due(clicks: int, dirty: int, waited_s: float, **settings) -> bool:
    hotpath = HotPath.__new__(HotPath)  # only _flush_due's attributes
    hotpath.runtime = SimpleNamespace(settings=Settings(**settings))
    store = SimpleNamespace(clicks_since_flush=clicks, dirty_count=dirty)
    owned = SimpleNamespace(store=store, flushed_at=time.monotonic() - waited_s)
    return hotpath._flush_due(owned)


def test_a_flush_is_due_at_the_first_bound_reached():
    bounds = dict(flush_interval_s=5, flush_max_clicks=1000, flush_max_rows=100)
    assert not _due(999, 99, 4.0, **bounds)
    assert _due(1000, 1, 0.0, **bounds)  # clicks
    assert _due(10, 100, 0.0, **bounds)  # dirty users: a million-user stream flushes often
    assert _due(10, 5, 5.1, **bounds)  # time
    assert not _due(0, 0, 60.0, **bounds)  # nothing to flush


def test_defaults_flush_hot_users_every_few_seconds_and_many_users_by_their_rows():
    s = Settings()
    assert (s.flush_interval_s, s.flush_max_clicks, s.flush_max_rows) == (5.0, 250_000, 25_000)
    assert not _due(200_000, 10_000, 3.0)  # 10k hot users clicking 200k times: not yet
    assert _due(30_000, 25_000, 0.5)  # 25k distinct users: now
