"""The worker's batch producer on the real broker: records queued while a batch
is in flight join the next batch, every partition keeps the call order, and
nothing is written behind a batch that failed."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError

from stream.app.runtime import BatchProducer, EarlierBatchFailed, acked
from stream.io.topics import Topics


def _with_producer(settings, work):
    """Run ``await work(producer)`` with a started BatchProducer; returns its result."""

    async def run():
        producer = BatchProducer(settings)
        await producer.start()
        try:
            return await work(producer)
        finally:
            await producer.stop()

    return asyncio.run(run())


def _values(got, partition: int) -> list[str]:
    return [m.value.decode() for m in sorted(got, key=lambda m: m.offset)
            if m.partition == partition]  # fmt: skip


def test_calls_queued_behind_a_batch_in_flight_share_one_batch_and_keep_their_order(
    settings_for, kafka
):
    settings = settings_for()
    topic = Topics(settings).assignments

    async def work(producer):
        calls = []
        for i in range(40):  # acks never awaited in between
            records = [(i % 2, b"k", f"{i}:{j}".encode()) for j in range(5)]
            calls.append(producer.send_nowait(topic, records))
            await asyncio.sleep(0)  # the first batch goes out meanwhile
        ends = [await acked(futures) for futures in calls]
        return calls, ends

    calls, ends = _with_producer(settings, work)
    got = kafka.read_all(topic)
    for partition in (0, 1):
        assert _values(got, partition) == [f"{i}:{j}" for i in range(partition, 40, 2)
                                           for j in range(5)]  # fmt: skip
        mine = [i for i in range(40) if i % 2 == partition]
        # one batch per call would be 20: the calls behind the first one share
        batches = {id(f) for i in mine for f in calls[i]}
        assert 2 <= len(batches) < 10
        # a call's end offset is at or past its own records, never before
        own_end = [5 * (n + 1) for n in range(20)]
        call_end = [max(end for _, end in ends[i]) for i in mine]
        assert all(e >= own for e, own in zip(call_end, own_end, strict=True))
        assert call_end == sorted(call_end) and call_end[-1] == 100


def test_records_over_one_batch_go_out_as_several_batches_in_order(settings_for, kafka):
    settings = settings_for()
    topic = Topics(settings).assignments
    big = "x" * (200 << 10)  # five fill a 1 MiB batch

    async def work(producer):
        records = [(0, b"k", f"{i}:{big}".encode()) for i in range(12)]
        futures = producer.send_nowait(topic, records)
        return futures, await acked(futures)

    futures, ends = _with_producer(settings, work)
    assert len(set(futures)) >= 3
    assert [end for _, end in ends] == sorted(end for _, end in ends)
    assert ends[-1] == (0, 12)
    got = kafka.read_all(topic)
    assert [v.split(":")[0] for v in _values(got, 0)] == [str(i) for i in range(12)]


def test_record_headers_reach_the_consumer(settings_for, kafka):
    settings = settings_for()
    topic = Topics(settings).cf_deltas

    records = [(0, b"3", b"{}", [("source", b"1:20:29")]), (0, b"4", b"{}")]
    _with_producer(settings, lambda producer: producer.send(topic, records))
    got = sorted(kafka.read_all(topic), key=lambda m: m.offset)
    assert [list(m.headers) for m in got] == [[("source", b"1:20:29")], []]


def _slow_first_batch(producer, fail: bool):
    """Make the first batch's send wait 50 ms on the client side (so the next
    records queue behind it) and then fail as a request timeout, or go out."""
    real = producer._producer.send_batch
    calls = []

    async def send_batch(batch, topic, *, partition):
        calls.append(partition)
        if len(calls) == 1:
            await asyncio.sleep(0.05)
            if fail:
                raise KafkaTimeoutError("injected: the first batch timed out")
        return await real(batch, topic, partition=partition)

    producer._producer.send_batch = send_batch
    return calls


def test_a_failed_batch_fails_the_batch_queued_behind_it_which_is_not_written(settings_for, kafka):
    settings = settings_for()
    topic = Topics(settings).cf_deltas

    async def work(producer):
        sends = _slow_first_batch(producer, fail=True)
        first = producer.send_nowait(topic, [(0, b"1", b"a")])
        await asyncio.sleep(0)  # the first batch is closed and on its way
        behind = producer.send_nowait(topic, [(0, b"1", b"b"), (0, b"1", b"c")])
        with pytest.raises(KafkaTimeoutError):
            await acked(first)
        with pytest.raises(EarlierBatchFailed, match="before it"):
            await acked(behind)
        after = await producer.send(topic, [(0, b"1", b"d")])  # once both have ended
        return sends, after

    sends, after = _with_producer(settings, work)
    assert sends == [0, 0]  # the batch behind the failed one never reached the client
    assert after == {0: 1}
    assert _values(kafka.read_all(topic), 0) == ["d"]


def test_a_cancelled_waiter_leaves_the_shared_batch_to_go_out(settings_for, kafka):
    settings = settings_for()
    topic = Topics(settings).assignments

    async def work(producer):
        _slow_first_batch(producer, fail=False)
        first = producer.send_nowait(topic, [(0, b"k", b"a")])
        await asyncio.sleep(0)
        mine = producer.send_nowait(topic, [(0, b"k", b"b")])  # joins the open batch
        waiter = asyncio.ensure_future(producer.send(topic, [(0, b"k", b"c")]))  # and this
        await asyncio.sleep(0.01)
        waiter.cancel()  # e.g. a task stopped while waiting for its ack
        ends = await acked(first + mine)
        later = await producer.send(topic, [(0, b"k", b"d")])
        return waiter, ends, later

    waiter, ends, later = _with_producer(settings, work)
    assert waiter.cancelled()
    assert ends == [(0, 1), (0, 3)] and later == {0: 4}
    assert _values(kafka.read_all(topic), 0) == ["a", "b", "c", "d"]
