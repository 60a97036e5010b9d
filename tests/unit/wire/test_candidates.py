"""Cluster candidates: pinned bytes, valid against the schema."""

from __future__ import annotations

import orjson
import pytest

from stream.wire.candidates import candidates_record
from stream.wire.schemas import validate


def test_candidates_are_pinned_valid_and_decode_back():
    key, value = candidates_record(12, ["a", "é"], [3.14159265, 0.5], centres_version=4, ts_ms=7)
    # the bytes the CF owner wrote before the format moved to stream.wire
    assert key == b"12"
    assert (
        value
        == (
            '{"cluster_id":12,"items":[{"item_id":"a","score":3.141593},'
            '{"item_id":"é","score":0.5}],"centres_version":4,"ts":7}'
        ).encode()
    )
    record = validate("cluster-candidates", orjson.loads(value))
    assert [i["item_id"] for i in record["items"]] == ["a", "é"]
    assert (record["cluster_id"], record["centres_version"], record["ts"]) == (12, 4, 7)


def test_items_and_scores_must_pair_up():
    with pytest.raises(ValueError):
        candidates_record(1, ["a", "b"], [1.0], centres_version=1, ts_ms=0)
