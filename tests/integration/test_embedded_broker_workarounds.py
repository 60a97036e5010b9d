"""Each defect of the embedded broker, shown to exist, and its workaround, shown to work.

If a broker upgrade fixes a defect, the test asserting it fails: then drop the
workaround from stream/io/embedded_broker_workarounds.py together with the test.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from stream.io.embedded_broker_workarounds import (
    EMBEDDED_FETCH_MAX_WAIT_MS,
    EMBEDDED_HEARTBEAT_MS,
    EMBEDDED_SESSION_TIMEOUT_MS,
    high_watermarks,
    high_watermarks_async,
)

pytestmark = pytest.mark.broker


def _produce_batches(bootstrap: str, topic: str, sizes: tuple[int, ...], partition: int = 0):
    """One record batch per entry of ``sizes`` (a long linger, then a flush, sends each as one)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=60_000)
    try:
        for batch, size in enumerate(sizes):
            for i in range(size):
                producer.send(topic, f"{batch}-{i}".encode(), partition=partition)
            producer.flush(timeout=5)
    finally:
        producer.close()


def _count_records(bootstrap: str, topic: str, partition: int, expected: int) -> int:
    """Records really in the partition, read from offset 0 (the ground truth)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        offsets: list[int] = []
        deadline = time.monotonic() + 5
        while len(offsets) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                offsets.extend(record.offset for record in records)
        consumer.seek(tp, max(offsets, default=-1) + 1)  # nothing after the last one
        assert consumer.poll(timeout_ms=200) == {}
        assert offsets == list(range(len(offsets)))
        return len(offsets)
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("sizes", "listed", "true_end"),
    [
        ((10, 10, 10), 21, 30),  # base offset of the newest batch (20) + 1
        ((5,), 1, 5),
        ((1, 1, 1), 3, 3),  # single-record batches hide the defect
        ((), 0, 0),
    ],
)
def test_list_offsets_latest_is_wrong_and_fetch_high_watermark_is_right(
    bootstrap, unique_name, sizes, listed, true_end
):
    topic = unique_name("hw")
    _produce_batches(bootstrap, topic, (*sizes, 1), partition=1)  # creates the topic
    _produce_batches(bootstrap, topic, sizes, partition=0)
    assert _count_records(bootstrap, topic, 0, true_end) == true_end

    # the defect: ListOffsets(latest), i.e. the standard end_offsets
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        assert consumer.end_offsets([TopicPartition(topic, 0)]) == {
            TopicPartition(topic, 0): listed
        }
    finally:
        consumer.close()
    assert high_watermarks(bootstrap, topic, [0], embedded=False) == {0: listed}

    # the workaround: the high watermark of a fetch response
    assert high_watermarks(bootstrap, topic, [0], embedded=True) == {0: true_end}
    assert asyncio.run(high_watermarks_async(bootstrap, topic, [0], embedded=True)) == {0: true_end}


def test_high_watermarks_of_every_partition(bootstrap, unique_name):
    topic = unique_name("hw-all")
    _produce_batches(bootstrap, topic, (10, 10, 10), partition=0)  # auto-created: 4 partitions
    _produce_batches(bootstrap, topic, (7,), partition=2)
    expected = {0: 30, 1: 0, 2: 7, 3: 0}
    assert high_watermarks(bootstrap, topic, embedded=True) == expected
    assert asyncio.run(high_watermarks_async(bootstrap, topic, embedded=True)) == expected


def test_high_watermarks_of_unknown_topic_is_empty_and_creates_nothing(bootstrap, unique_name):
    topic = unique_name("absent")
    assert high_watermarks(bootstrap, topic, embedded=True) == {}
    assert asyncio.run(high_watermarks_async(bootstrap, topic, embedded=True)) == {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


def test_fetch_max_wait_zero_gets_no_fetch_response(bootstrap, unique_name):
    """Why the high-watermark probe and EMBEDDED_FETCH_MAX_WAIT_MS are never 0."""
    topic = unique_name("wait0")
    _produce_batches(bootstrap, topic, (3,), partition=0)
    tp = TopicPartition(topic, 0)
    highwater = {}
    for max_wait_ms in (0, EMBEDDED_FETCH_MAX_WAIT_MS):
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=max_wait_ms)
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            deadline = time.monotonic() + 0.5
            while consumer.highwater(tp) is None and time.monotonic() < deadline:
                consumer.poll(timeout_ms=50)
            highwater[max_wait_ms] = consumer.highwater(tp)
        finally:
            consumer.close()
    assert highwater == {0: None, EMBEDDED_FETCH_MAX_WAIT_MS: 3}


async def _delivery_latency(bootstrap: str, topic: str, fetch_max_wait_ms: int) -> float:
    """Seconds from producing a record to a caught-up consumer receiving it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=fetch_max_wait_ms)
    await producer.start()
    await consumer.start()
    try:
        tp = AioTopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)  # empty partition: the first fetch now waits for data
        # the experiment itself: the record must arrive while that fetch waits
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await producer.send_and_wait(topic, b"late", partition=0)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        assert [record.value for record in batch[tp]] == [b"late"]
        return time.monotonic() - started
    finally:
        await consumer.stop()
        await producer.stop()


def test_waiting_fetch_delivers_late_unless_max_wait_is_short(bootstrap, unique_name):
    """A waiting fetch is re-checked only after ~max_wait/2 (1500 ms -> ~700 ms late)."""
    latency = {}
    for max_wait_ms in (1500, EMBEDDED_FETCH_MAX_WAIT_MS):
        topic = unique_name("latency")
        _produce_batches(bootstrap, topic, (1,), partition=1)  # create it, partition 0 empty
        latency[max_wait_ms] = asyncio.run(_delivery_latency(bootstrap, topic, max_wait_ms))
    assert latency[1500] > 0.4
    assert latency[EMBEDDED_FETCH_MAX_WAIT_MS] < 0.1  # ~5 ms


async def _join_seconds(bootstrap: str, topic: str, group: str, session_ms: int, heartbeat_ms: int):
    """Seconds from starting a group consumer to its first assignment."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=heartbeat_ms,
        fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS,
    )
    started = time.monotonic()
    await consumer.start()
    try:
        async with asyncio.timeout(15):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=50)
        return time.monotonic() - started
    finally:
        await consumer.stop()


def test_group_join_time_follows_the_session_timeout(bootstrap, unique_name):
    topic = unique_name("join")
    _produce_batches(bootstrap, topic, (1,))
    short = asyncio.run(
        _join_seconds(
            bootstrap, topic, unique_name("g"), EMBEDDED_SESSION_TIMEOUT_MS, EMBEDDED_HEARTBEAT_MS
        )
    )
    longer = asyncio.run(_join_seconds(bootstrap, topic, unique_name("g"), 6000, 2000))
    assert short < 1.8  # ~1 s
    assert longer > 2.5  # ~3 s: ceil(session / 2) seconds; 45 s (kafka-python) -> 23 s
