"""Item records: pinned bytes, round trip and one-line reasons for bad values."""

from __future__ import annotations

import pytest

from stream.errors import BadRecord
from stream.wire.items import decode_item, item_message


def test_item_records_are_pinned_and_round_trip():
    record = {
        "item_id": "iü",
        "ts": 5,
        "category": "news",
        "tags": ["a", "b"],
        "vector": [0.5, -0.25],
    }
    key, value = item_message(record)
    # the bytes written before the format moved to stream.wire
    assert (key, value) == (
        b"i\xc3\xbc",
        b'{"item_id":"i\xc3\xbc","ts":5,"category":"news","tags":["a","b"],"vector":[0.5,-0.25]}',
    )
    assert decode_item(value) == record


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"{", "invalid JSON"), (b'"i1"', "not an object"), (b'{"ts": 5}', "missing field: item_id")],
)
def test_a_bad_item_is_refused_with_its_reason(value, reason):
    with pytest.raises(BadRecord, match=reason):
        decode_item(value)
