"""Centre-set records on the centres topic: exact round trip and pinned bytes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings

from stream.core.centres import CentreSet
from stream.wire.centres import (
    centres_from_record,
    centres_record,
    decode_centres,
    encode_centres,
)
from stream.wire.schemas import validate
from tests.unit.core.test_centres import centre_sets


@settings(max_examples=100, deadline=None)
@given(centre_sets())
def test_bytes_and_record_round_trip_exactly(cs):
    data = encode_centres(cs)
    back = decode_centres(data)
    assert back == cs
    assert back.vectors.tobytes() == cs.vectors.tobytes()
    assert back.ids.dtype == np.int64 and back.vectors.dtype == np.float32
    assert encode_centres(back) == data
    assert back.stats == cs.stats
    rec = orjson.loads(orjson.dumps(centres_record(cs)))  # through real JSON
    again = centres_from_record(rec)
    assert again == cs and centres_record(again) == centres_record(cs)


def test_the_encoded_bytes_are_pinned():
    # written by CentreSet.to_bytes before the format moved here: the same bytes
    cs = CentreSet.create(
        [[3, 4], [0, 1]], reason="merge", ids=[5, 9], sizes=[10, 2], version=4,
        aliases={2: 9}, created_at_ms=1700, stats={"merged": 1},
    )  # fmt: skip
    assert encode_centres(cs) == (
        b'{"version":4,"created_at":1700,"reason":"merge","dim":2,"ids":[5,9],'
        b'"vectors":"mpkZP83MTD8AAAAAAACAPw==","sizes":[10,2],"aliases":{"2":9},'
        b'"stats":{"merged":1}}'
    )
    assert decode_centres(encode_centres(cs)) == cs
    validate("centres", centres_record(cs))


def test_a_record_with_truncated_vectors_is_rejected():
    rec = centres_record(CentreSet.create([[1, 0], [0, 1]], created_at_ms=0))
    rec["dim"] = 3
    with pytest.raises(ValueError):
        centres_from_record(rec)
