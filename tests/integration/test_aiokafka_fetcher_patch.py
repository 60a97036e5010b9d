"""Fetched clicks as columns (stream.io.aiokafka_fetcher_patch) on the real broker: a
consumer that opts in gets each partition's fetch as one FetchedRecords with
the same offsets, keys and values as an ordinary consumer of the same topic,
which keeps its ConsumerRecord objects; compressed batches go the general way
into the same columns."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from stream.io import aiokafka_fetcher_patch
from stream.io.embedded_broker_workarounds import EMBEDDED_FETCH_MAX_WAIT_MS
from stream.io.fetched import FetchedRecords
from stream.io.kafka import batch_loop_consumer


def _read(bootstrap: str, topic: str, n: int, start: int = 0, **kwargs) -> list:
    """What ``getmany`` returned for partition 0 from offset ``start`` until
    ``n`` records were read (parts: records or FetchedRecords)."""

    async def run():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS, **kwargs,
        )  # fmt: skip
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, start)
            parts: list = []
            while sum(len(p) if isinstance(p, FetchedRecords) else 1 for p in parts) < n:
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=7)
                assert batch, "no records within 2 s"
                parts += batch[tp]
            return parts
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _triples(parts) -> list[tuple]:
    return [(r.offset, r.key, r.value) for r in FetchedRecords.gather(parts)]


def _send(bootstrap: str, topic: str, values, keys, batches: int, **kwargs) -> None:
    """``values`` in ``batches`` producer batches (each one flushed)."""

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, **kwargs)
        await producer.start()
        try:
            step = -(-len(values) // batches)
            for a in range(0, len(values), step):
                futures = [
                    await producer.send(topic, v, key=k, partition=0, headers=[("h", b"x")])
                    for k, v in zip(keys[a : a + step], values[a : a + step], strict=True)
                ]
                await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def _column_reads(monkeypatch) -> list[bool]:
    """Records, per fetch the lean consumer reads, whether it took the column path."""
    seen: list[bool] = []
    parse = aiokafka_fetcher_patch.parse_batches

    def spy(raw, fetch_offset):
        parsed = parse(raw, fetch_offset)
        seen.append(parsed is not None)
        return parsed

    monkeypatch.setattr(aiokafka_fetcher_patch, "parse_batches", spy)
    return seen


def test_an_opted_in_consumer_gets_columns_of_the_same_records(bootstrap, unique_name, monkeypatch):
    seen = _column_reads(monkeypatch)
    topic = unique_name("lean")
    values = [None if i == 7 else f'{{"n":{i}}}'.encode() for i in range(40)]
    keys = [None if i % 5 == 0 else f"k{i}".encode() for i in range(40)]
    _send(bootstrap, topic, values, keys, batches=4)
    assert aiokafka_fetcher_patch.install()  # the installed aiokafka has the expected shape
    lean = _read(bootstrap, topic, 40, value_deserializer=aiokafka_fetcher_patch.LEAN_VALUES)
    plain = _read(bootstrap, topic, 40)  # in the same process, after install()
    assert all(type(m) is ConsumerRecord for m in plain)
    assert lean and all(type(p) is FetchedRecords for p in lean)
    assert len(lean) < 40  # a fetch's records come as one part, not one by one
    expected = [(i, keys[i], values[i]) for i in range(40)]
    assert _triples(lean) == _triples(plain) == expected
    assert seen and all(seen)  # read by the compiled loop, not record by record
    # from an offset inside a producer batch: the records before it are left out
    lean = _read(
        bootstrap, topic, 27, start=13, value_deserializer=aiokafka_fetcher_patch.LEAN_VALUES
    )
    assert _triples(lean) == expected[13:]


def test_compressed_batches_go_the_general_way_into_the_same_columns(
    bootstrap, unique_name, monkeypatch
):
    seen = _column_reads(monkeypatch)
    topic = unique_name("lean-gzip")
    values = [f'{{"n":{i}}}'.encode() for i in range(30)]
    keys = [f"k{i}".encode() for i in range(30)]
    _send(bootstrap, topic, values, keys, batches=3, compression_type="gzip")
    assert aiokafka_fetcher_patch.install()
    lean = _read(bootstrap, topic, 30, value_deserializer=aiokafka_fetcher_patch.LEAN_VALUES)
    assert all(type(p) is FetchedRecords for p in lean)
    assert _triples(lean) == [(i, keys[i], values[i]) for i in range(30)]
    assert seen and not any(seen)


def test_the_clicks_loop_opts_in_and_the_cf_loop_does_not(settings_for):
    settings = settings_for()

    async def deserializers():
        clicks = batch_loop_consumer(settings, "clicks", lean=True)
        cf = batch_loop_consumer(settings, "cf")
        return clicks._value_deserializer, cf._value_deserializer

    clicks, cf = asyncio.run(deserializers())
    assert clicks is aiokafka_fetcher_patch.LEAN_VALUES and cf is None


def test_an_unexpected_fetcher_is_left_alone(monkeypatch):
    from aiokafka.consumer import fetcher

    class Other:  # a future aiokafka whose PartitionRecords takes other arguments
        def __init__(self, tp, records, fetch_offset):
            pass

    monkeypatch.setattr(aiokafka_fetcher_patch, "_installed", None)
    memory_records = fetcher.MemoryRecords
    monkeypatch.setattr(fetcher, "PartitionRecords", Other)
    assert aiokafka_fetcher_patch.install() is False
    assert fetcher.PartitionRecords is Other and fetcher.MemoryRecords is memory_records
