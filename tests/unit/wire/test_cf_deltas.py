"""cf-delta records: pinned bytes, round trip through the decoder and the header."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream.core.cf import CFDelta, make_delta
from stream.core.pairs import GLOBAL, PairDelta
from stream.wire.cf_deltas import (
    cf_delta_records,
    decode_cf_delta,
    parse_source_header,
    source_header,
)
from stream.wire.partition import cluster_partition
from stream.wire.schemas import validate


def _records():
    delta = make_delta([3, 3, 5], [10, 11, 10], [1000, 2000, 2000], [1.0, 2.0, 0.5], 1000.0)
    names = {10: "i10", 11: "iü11"}
    return cf_delta_records(
        delta, lambda keys: [names[k] for k in keys.tolist()], "app-clicks", 1, 40, 44,
        lambda cid: cluster_partition(cid, 4), ts_max_of={5: 1500},
    )  # fmt: skip


def test_cf_delta_records_are_pinned():
    source = b'"source":{"topic":"app-clicks","partition":1,"first_offset":40,"last_offset":44}}'
    header = [("source", b"1:40:44")]
    # the bytes written before the format moved to stream.wire
    assert _records() == [
        (3, b"3", b'{"cluster_id":3,"items":{"i10":0.5,"i\xc3\xbc11":2.0},"landmark":2000,'
         b'"ts_min":1000,"ts_max":2000,' + source, header),
        (2, b"5", b'{"cluster_id":5,"items":{"i10":0.5},"landmark":2000,"ts_min":1000,'
         b'"ts_max":1500,' + source, header),
    ]  # fmt: skip


def test_cf_delta_records_round_trip():
    for partition, key, value, headers in _records():
        rec = decode_cf_delta(value)
        validate("cf-delta", rec)
        assert str(rec["cluster_id"]).encode() == key
        assert partition == cluster_partition(rec["cluster_id"], 4)
        assert parse_source_header(headers) == (1, 40, 44)
        assert rec["source"]["first_offset"] == 40 and rec["source"]["last_offset"] == 44
    assert decode_cf_delta(_records()[0][2])["items"] == {"i10": 0.5, "iü11": 2.0}


def test_an_old_record_without_last_offset_reads_as_one_offset():
    rec = orjson.loads(_records()[1][2])
    del rec["source"]["last_offset"]
    assert decode_cf_delta(orjson.dumps(rec))["source"]["last_offset"] == 40


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "invalid JSON"),
        (b"[]", "not an object"),
        (b'{"cluster_id": 1}', "missing field: items"),
        (b'{"cluster_id":1,"items":{},"landmark":0,"ts_min":0,"ts_max":0,"source":{}}',
         "source: needs partition and first_offset"),
        (b'{"cluster_id":"1","items":{},"landmark":0,"ts_min":0,"ts_max":0,'
         b'"source":{"partition":0,"first_offset":0}}', "cluster_id/items: wrong type"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_with_its_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        decode_cf_delta(value)


def test_co_click_pairs_ride_in_their_clusters_record_and_the_global_scope_in_its_own():
    delta = make_delta([3], [10], [1000], [1.0], 1000.0)
    pairs = PairDelta(np.array([3, GLOBAL, GLOBAL]), np.array([10, 10, 11]),
                      np.array([11, 11, 12]), np.array([0.5, 1.0, 2.0]), 900, 800, 900)  # fmt: skip
    names = {10: "a", 11: "b", 12: "c"}
    records = cf_delta_records(
        delta, lambda keys: [names[k] for k in keys.tolist()], "app-clicks", 0, 7, 9,
        lambda cid: cluster_partition(cid, 4), pairs=pairs,
    )  # fmt: skip
    got = {int(key): decode_cf_delta(value) for _, key, value, _ in records}
    for rec in got.values():
        validate("cf-delta", rec)
    assert got[3]["items"] == {"a": 1.0}
    assert got[3]["pairs"] == {"a": ["a"], "b": ["b"], "values": [0.5]}
    assert got[3]["landmark"] == 1000 and got[3]["pairs_landmark"] == 900
    assert got[GLOBAL]["items"] == {}
    assert got[GLOBAL]["pairs"] == {"a": ["a", "b"], "b": ["b", "c"], "values": [1.0, 2.0]}
    raw = {int(key): orjson.loads(value) for _, key, value, _ in records}
    assert raw[GLOBAL]["pairs"] == got[GLOBAL]["pairs"]  # columns on the wire too
    assert (got[GLOBAL]["ts_min"], got[GLOBAL]["ts_max"]) == (800, 900)
    assert not got[3]["pairs_directed"]  # the default: unordered pairs
    directed = cf_delta_records(
        delta, lambda keys: [names[k] for k in keys.tolist()], "app-clicks", 0, 7, 9,
        lambda cid: cluster_partition(cid, 4), pairs=pairs, pairs_directed=True,
    )  # fmt: skip
    for _, _, value, _ in directed:
        rec = decode_cf_delta(value)
        validate("cf-delta", rec)
        assert rec["pairs_directed"] is True

    # pairs alone still make records; nothing makes none
    def ids(keys):
        return [names[k] for k in keys.tolist()]

    alone = cf_delta_records(CFDelta.empty(), ids, "t", 0, 0, 0, int, pairs=pairs.select([1]))
    assert [key for _, key, _, _ in alone] == [b"-1"]
    assert cf_delta_records(CFDelta.empty(), ids, "t", 0, 0, 0, int, pairs=PairDelta.empty()) == []


@pytest.mark.parametrize(
    "pairs",
    [[["a", "b"]], [["a", 1, 2.0]], [["a", "b", "1"]], {"a": "b"}, [], [["a", "a", 1.0]],
     [["a", "b", -1.0]], {"a": [], "b": [], "values": []}, {"a": ["a"], "b": ["b"]},
     {"a": ["a"], "b": ["b", "c"], "values": [1.0]}, {"a": ["a"], "b": [2], "values": [1.0]},
     {"a": ["a"], "b": ["a"], "values": [1.0]}, {"a": ["a"], "b": ["b"], "values": [-1.0]},
     {"a": ["a"], "b": ["b"], "values": [True]}, "a,b,1"],
)  # fmt: skip
def test_bad_pairs_are_refused(pairs):
    value = {
        "cluster_id": 1,
        "items": {},
        "landmark": 0,
        "ts_min": 0,
        "ts_max": 0,
        "source": {"partition": 0, "first_offset": 0},
        "pairs": pairs,
        "pairs_landmark": 0,
    }
    with pytest.raises(ValueError, match="pairs"):
        decode_cf_delta(orjson.dumps(value))


def test_pairs_directed_must_be_a_boolean_and_defaults_to_false():
    value = {
        "cluster_id": 1, "items": {}, "landmark": 0, "ts_min": 0, "ts_max": 0,
        "source": {"partition": 0, "first_offset": 0}, "pairs": [["a", "b", 1.0]],
        "pairs_landmark": 0,
    }  # fmt: skip
    assert decode_cf_delta(orjson.dumps(value))["pairs_directed"] is False  # older records
    with pytest.raises(ValueError, match="pairs_directed"):
        decode_cf_delta(orjson.dumps({**value, "pairs_directed": "yes"}))


def test_the_source_header_round_trips_and_refuses_what_it_cannot_read():
    assert parse_source_header([("other", b"x"), source_header(3, 7, 9)]) == (3, 7, 9)
    assert source_header(3, 7, 9) == ("source", b"3:7:9")
    for headers in (None, [], [("source", b"1:2")], [("source", b"a:b:c")], [("source", None)]):
        assert parse_source_header(headers) is None


@pytest.mark.parametrize("cluster_id", [-2, 2**31, True])
def test_a_cluster_id_out_of_range_is_refused(cluster_id):
    value = {"cluster_id": cluster_id, "items": {}, "landmark": 0, "ts_min": 0, "ts_max": 0,
             "source": {"partition": 0, "first_offset": 0}}  # fmt: skip
    with pytest.raises(ValueError, match="cluster_id"):
        decode_cf_delta(orjson.dumps(value))


def test_pairs_written_as_rows_before_the_columns_still_decode_as_columns():
    value = {
        "cluster_id": 1, "items": {}, "landmark": 0, "ts_min": 0, "ts_max": 0,
        "source": {"partition": 0, "first_offset": 0}, "pairs_landmark": 0,
        "pairs": [["a", "b", 1.0], ["b", "c", 2]],
    }  # fmt: skip
    rec = decode_cf_delta(orjson.dumps(value))
    assert rec["pairs"] == {"a": ["a", "b"], "b": ["b", "c"], "values": [1.0, 2]}
