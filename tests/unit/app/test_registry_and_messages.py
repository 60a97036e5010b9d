"""Registry view, record encoders and the user partitioner, without a broker."""

from __future__ import annotations

import numpy as np
import orjson
from aiokafka.partitioner import DefaultPartitioner

from stream.app.registry import STALE_S, RegistryView
from stream.core.cf import make_delta
from stream.core.pipeline import AssignmentChanges
from stream.wire.assignments import assignment_records
from stream.wire.cf_deltas import cf_delta_records, decode_cf_delta, parse_source_header
from stream.wire.partition import cluster_partition, user_partition
from stream.wire.schemas import validate


def _rec(worker, ts, clicks=(), cf=(), sizes=None, leader=False):
    return {"worker_id": worker, "url": f"http://{worker}", "leader": leader, "ts": ts,
            "clicks_partitions": list(clicks), "cf_partitions": list(cf), "sizes": sizes or {}}  # fmt: skip


def test_registry_takes_the_newest_report_of_each_partition():
    view = RegistryView()
    view.update(_rec("a", 100.0, clicks=[0, 1], sizes={"0": {"5": 3}, "1": {"6": 2}}))
    view.update(_rec("b", 101.0, clicks=[1], sizes={"1": {"6": 4, "7": 1}}, leader=True))
    assert view.owner_of_clicks(0, now=102) == "http://a"
    assert view.owner_of_clicks(1, now=102) == "http://b"  # b took partition 1 later
    assert view.sizes(now=102) == {5: 3, 6: 4, 7: 1}
    assert view.sizes({7: 5}, now=102) == {5: 4, 6: 4}  # retired 7 counts for 5
    assert view.leader_url(now=102) == "http://b"
    assert view.owner_of_clicks(0, now=100 + STALE_S + 1) is None  # a went silent
    view.update(_rec("a", 90.0, clicks=[2]))  # an older record never wins
    assert view.owner_of_clicks(2, now=102) is None


def test_user_partition_matches_the_clients_default_partitioner():
    partitioner = DefaultPartitioner()
    for uid in ("u1", "ann", "ü-ñ", "x" * 200):
        for n in (1, 2, 7):
            assert user_partition(uid, n) == partitioner(
                uid.encode(), list(range(n)), list(range(n))
            )
            assert cluster_partition(n, 4) == partitioner(
                str(n).encode(), [0, 1, 2, 3], [0, 1, 2, 3]
            )


def test_cf_delta_records_round_trip():
    delta = make_delta([3, 3, 5], [10, 11, 10], [1000, 2000, 2000], [1.0, 2.0, 0.5], 1000.0)
    names = {10: "i10", 11: "i11"}
    records = cf_delta_records(
        delta, lambda keys: [names[k] for k in keys.tolist()], "app-clicks", 1, 40, 44,
        lambda cid: cid % 2,
    )  # fmt: skip
    assert [(p, k) for p, k, _, _ in records] == [(1, b"3"), (1, b"5")]
    # the source again in a header, to be read without parsing the value
    assert all(parse_source_header(h) == (1, 40, 44) for *_, h in records)
    first = decode_cf_delta(records[0][2])
    assert first["cluster_id"] == 3 and set(first["items"]) == {"i10", "i11"}
    assert first["source"] == {
        "topic": "app-clicks",
        "partition": 1,
        "first_offset": 40,
        "last_offset": 44,
    }
    assert first["landmark"] == 2000 and first["items"]["i11"] == 2.0


def test_a_malformed_or_missing_source_header_reads_as_none():
    assert parse_source_header(None) is None
    assert parse_source_header([("other", b"1:2:3")]) is None
    assert parse_source_header([("source", b"1:2")]) is None
    assert parse_source_header([("source", b"a:b:c")]) is None


def test_assignment_records_carry_previous_memberships():
    changes = AssignmentChanges(
        ["u1"], np.array([[4, -1]]), np.array([[0.9, 0.0]], dtype=np.float32),
        np.array([[6, 4]]), np.array([[0.95, 0.5]], dtype=np.float32), np.array([123]),
    )  # fmt: skip
    ((partition, key, value),) = assignment_records(changes, 2, 7, changes.ts)
    rec = orjson.loads(value)
    assert partition == 2 and key == b"u1"
    assert [m["cluster_id"] for m in rec["memberships"]] == [6, 4]
    assert [m["cluster_id"] for m in rec["previous"]] == [4]
    assert rec["centres_version"] == 7 and rec["ts"] == 123
    validate("assignment", rec)
