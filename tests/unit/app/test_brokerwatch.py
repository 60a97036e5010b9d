"""Broker loss without a broker: the log gate, the registry kept while the
broker is away, and the CF owner forgetting a restarted source log's offsets
(also for a partition it takes after the broker came back empty)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from aiokafka import TopicPartition

from stream.app.brokerwatch import LogGate
from stream.app.cfpartition import CFPartition
from stream.app.cfstore import CFPartitionStore
from stream.app.registry import STALE_S, RegistryView
from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable
from tests.unit.app.test_cfowner_local import _delta, _Log, _owner, _records


def _record(name: str, msg: str = "failed %s", args=(1,), level=logging.ERROR):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_client_errors_are_dropped_while_lost_and_rate_limited_otherwise():
    clock = _Clock()
    gate = LogGate(interval_s=60.0, clock=clock)
    # up: a client's repeated line passes once a minute, whatever its arguments
    assert gate.filter(_record("aiokafka.conn", args=("node 1",)))
    assert not gate.filter(_record("aiokafka.conn", args=("node 2",)))
    clock.now = 61.0
    assert gate.filter(_record("aiokafka.conn", args=("node 3",)))
    # lost: every warning and error of the clients is dropped, info passes
    gate.lost = True
    clock.now = 200.0
    assert not gate.filter(_record("kafka.conn"))
    assert not gate.filter(_record("aiokafka.consumer.group_coordinator", level=logging.WARNING))
    assert gate.filter(_record("aiokafka.conn", level=logging.INFO))
    # ours: the same text once a minute, other partitions' lines pass
    assert gate.filter(_record("stream.app.hotpath", "partition %d failed", (0,)))
    assert not gate.filter(_record("stream.app.hotpath", "partition %d failed", (0,)))
    assert gate.filter(_record("stream.app.hotpath", "partition %d failed", (1,)))
    # the watch's own state lines always pass
    assert all(gate.filter(_record("stream.app.brokerwatch", "broker lost")) for _ in range(3))
    assert gate.dropped == 4


def test_the_registry_keeps_the_last_ownership_while_the_broker_is_away():
    view = RegistryView()
    view.update({"worker_id": "b", "url": "http://b", "ts": 100.0, "clicks_partitions": [1],
                 "cf_partitions": [0]})  # fmt: skip
    later = 100.0 + STALE_S + 50
    assert view.owner_of_clicks(1, now=later) is None  # b stopped reporting: stale
    view.frozen_at = 110.0  # the broker was lost then: nobody can report since
    assert view.owner_of_clicks(1, now=later) == "http://b"
    assert view.owner_of_cf(0, now=later) == "http://b"
    view.frozen_at = None
    assert view.owner_of_clicks(1, now=later) is None


def test_a_restarted_source_log_forgets_only_its_own_watermarks():
    owner, part = _owner()
    part.watermarks = {(0, 5): 900, (1, 5): 700, (0, 7): 40}
    part.local = {(0, 5): [(880, 899)], (1, 7): [(600, 650)]}
    owner.source_rebased(0)
    assert part.watermarks == {(1, 5): 700}
    assert part.local == {(1, 7): [(600, 650)]}
    assert part.dirty


class _NewLogConsumer:
    """The CF owner's consumer after an empty broker came back: every log starts at 0."""

    def __init__(self, tps):
        self.tps = set(tps)
        self.seeks: dict = {}

    async def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def assignment(self):
        return self.tps

    def seek(self, tp, offset):
        self.seeks[tp] = offset

    async def commit(self, offsets):
        pass


def test_a_cf_partition_taken_after_the_clicks_were_rebased_forgets_every_old_watermark(
    tmp_path,
):
    # the hot path's source_rebased ran while this partition was not owned (a
    # rebalance in between): its snapshot still has the old logs' watermarks,
    # which would drop the new logs' deltas (offsets from 0 up) as duplicates
    owner, part = _owner()
    owner.owned = {}
    owner.source_rebased(0)
    owner.source_rebased(1)
    store = CFPartitionStore(tmp_path / "cf-p0")
    part.store = store
    part.next_offset, part.dirty = 36, True
    part.watermarks = {(0, 4): 992, (1, 4): 1008}
    part.local = {(0, 6): deque([(980, 991)])}
    asyncio.run(owner.snapshot(part))
    tp = TopicPartition(owner.runtime.topics.cf_deltas, 0)
    owner.consumer = _NewLogConsumer([tp])
    owner.stale_logs = {0, 1}  # what logs_new left for partitions taken later

    taken = CFPartition(0, CFTable(half_life_ms=part.table.half_life_ms), store, CoClickTable(1e9))
    taken.next_offset, taken.watermarks, _, taken.local = store.load(taken.table, taken.coclick)
    assert taken.watermarks == {(0, 4): 992, (1, 4): 1008}
    asyncio.run(owner._rebase(taken))
    assert (taken.next_offset, taken.watermarks, taken.local) == (0, {}, {})
    assert owner.consumer.seeks == {tp: 0} and owner.stale_logs == {1}
    # and so after a restart too: the rebase was snapshotted
    again = CFPartition(0, CFTable(half_life_ms=part.table.half_life_ms), store, CoClickTable(1e9))
    assert store.load(again.table, again.coclick)[:2] == (0, {})
    # a delta of the new log's first clicks is added, not dropped as a duplicate
    owner.owned = {0: taken}
    delta = _delta(owner, [4], ["i1"], seed=1)
    owner.apply(taken, _Log().msgs(_records(owner, delta, source=0, first=0, last=9)))
    assert owner.runtime.counters.cf_deltas_applied == 1
    assert owner.runtime.counters.cf_deltas_duplicate == 0
    store.close()
