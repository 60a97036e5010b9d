"""The worker's batch producer on the real broker: records queued while a batch
is in flight join the next batch, and every partition keeps the call order."""

from __future__ import annotations

import asyncio

from stream.app.runtime import BatchProducer
from stream.app.topics import Topics


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
            calls.append(await producer.send_nowait(topic, records))
            await asyncio.sleep(0)  # the first batch goes out meanwhile
        ends = [await asyncio.gather(*futures) for futures in calls]
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
        futures = await producer.send_nowait(topic, records)
        return futures, await asyncio.gather(*futures)

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
