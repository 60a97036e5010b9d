"""Worker records: what the registry publishes reads back; anything else is skipped."""

from __future__ import annotations

import pytest

from stream.app.registry import RegistryView
from stream.wire.workers import decode_worker, encode_worker


def test_a_record_reads_back_into_the_registry_view():
    record = {
        "worker_id": "w1", "url": "http://127.0.0.1:1", "leader": False, "ts": 100.0,
        "clicks_partitions": [0, 1], "cf_partitions": [1], "sizes": {"1": {"4": 3}}, "users": 3,
    }  # fmt: skip
    view = RegistryView()
    view.update(decode_worker(encode_worker(record)))
    assert view.owner_of_clicks(1, now=101.0) == "http://127.0.0.1:1"
    assert view.sizes(now=101.0) == {4: 3}


@pytest.mark.parametrize(
    "value", [b"{oops", b"[1, 2]", b'"w1"', b'{"worker_id": "w1"}', b'{"ts": 1.0}']
)
def test_a_value_that_is_not_a_worker_record_is_skipped(value):
    assert decode_worker(value) is None
