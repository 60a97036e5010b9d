"""Dead-letter records: pinned bytes and a round trip back to the rejected record."""

from __future__ import annotations

import base64

import orjson

from stream.wire.dlq import dlq_records
from stream.wire.schemas import validate


def test_dlq_records_are_pinned_and_give_the_rejected_record_back():
    rejects = [
        ("uü".encode(), b'{"ts": "x"}', 41, "ts: must be an integer"),
        (None, None, 42, "null value"),
    ]
    records = dlq_records(rejects, "app-clicks", 2, ts_ms=1_700_000_000_000)
    # the bytes written before the format moved to stream.wire
    assert records == [
        (2, "uü".encode(), b'{"reason":"ts: must be an integer","topic":"app-clicks",'
         b'"partition":2,"offset":41,"raw":"eyJ0cyI6ICJ4In0=","key":"dcO8","ts":1700000000000}'),
        (2, None, b'{"reason":"null value","topic":"app-clicks","partition":2,"offset":42,'
         b'"raw":"","key":null,"ts":1700000000000}'),
    ]  # fmt: skip
    for (key, raw, offset, reason), (_, _, value) in zip(rejects, records, strict=True):
        rec = validate("dlq", orjson.loads(value))
        assert base64.b64decode(rec["raw"]) == (raw or b"")
        assert (None if rec["key"] is None else base64.b64decode(rec["key"])) == key
        assert (rec["offset"], rec["reason"]) == (offset, reason)
