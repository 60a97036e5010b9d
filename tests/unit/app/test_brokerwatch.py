"""Broker loss without a broker: the log gate, the registry kept while the
broker is away, and the CF owner forgetting a restarted source log's offsets."""

from __future__ import annotations

import logging

from stream.app.brokerwatch import LogGate
from stream.app.registry import STALE_S, RegistryView
from tests.unit.app.test_cfowner_local import _owner


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
