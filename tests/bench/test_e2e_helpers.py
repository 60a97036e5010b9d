"""Helpers of the e2e benchmark that its figures rely on."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from stream.bench.e2e import _fill_batches

pytestmark = pytest.mark.broker


def test_a_tick_with_more_clicks_than_one_batch_holds_goes_out_whole(bootstrap):
    # the latency run's producer once dropped what did not fit in one batch
    records = [(0, f"u{i}".encode(), b"x" * 100) for i in range(60)]
    idx = list(range(5, 60))

    async def fill():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1024)
        await producer.start()
        try:
            parts = _fill_batches(producer, records, idx)
            return [(batch.record_count(), held) for batch, held in parts]
        finally:
            await producer.stop()

    parts = asyncio.run(fill())
    assert len(parts) > 1
    assert [i for _, held in parts for i in held] == idx
    assert all(count == len(held) for count, held in parts)
