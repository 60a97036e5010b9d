"""Lean fetched records (stream.io.lean_fetch) on the real broker: a consumer
that opts in gets aiokafka's decoded records, with the same offsets, keys and
values as an ordinary consumer of the same topic, which keeps its
ConsumerRecord objects."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stream.io import lean_fetch
from stream.io.broker_quirks import EMBEDDED_FETCH_MAX_WAIT_MS
from stream.io.kafka import batch_loop_consumer


def _read(bootstrap: str, topic: str, n: int, **kwargs) -> list:
    async def run():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS, **kwargs,
        )  # fmt: skip
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got: list = []
            while len(got) < n:
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=7)
                assert batch, "no records within 2 s"
                got += batch[tp]
            return got
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_an_opted_in_consumer_gets_the_same_records_without_the_copy(bootstrap, kafka, unique_name):
    topic = unique_name("lean")
    values = [f'{{"n":{i}}}'.encode() for i in range(40)]
    keys = [None if i % 5 == 0 else f"k{i}".encode() for i in range(40)]
    kafka.send(topic, values, keys, partition=0)
    assert lean_fetch.install()  # the installed aiokafka has the expected shape
    lean = _read(bootstrap, topic, 40, value_deserializer=lean_fetch.LEAN_VALUES)
    plain = _read(bootstrap, topic, 40)  # in the same process, after install()
    assert all(type(m) is ConsumerRecord for m in plain)
    assert not any(isinstance(m, ConsumerRecord) for m in lean)
    assert (
        [(m.offset, m.key, m.value) for m in lean]
        == [(m.offset, m.key, m.value) for m in plain]
        == [(i, keys[i], values[i]) for i in range(40)]
    )


def test_the_clicks_loop_opts_in_and_the_cf_loop_does_not(settings_for):
    settings = settings_for()

    async def deserializers():
        clicks = batch_loop_consumer(settings, "clicks", lean=True)
        cf = batch_loop_consumer(settings, "cf")
        return clicks._value_deserializer, cf._value_deserializer

    clicks, cf = asyncio.run(deserializers())
    assert clicks is lean_fetch.LEAN_VALUES and cf is None


def test_an_unexpected_fetcher_is_left_alone(monkeypatch):
    from aiokafka.consumer import fetcher

    class Other:  # a future aiokafka whose PartitionRecords takes other arguments
        def __init__(self, tp, records, fetch_offset):
            pass

    monkeypatch.setattr(lean_fetch, "_installed", None)
    monkeypatch.setattr(fetcher, "PartitionRecords", Other)
    assert lean_fetch.install() is False
    assert fetcher.PartitionRecords is Other
