"""The worker's batch producer on the real broker: queued batches keep their order."""

from __future__ import annotations

import asyncio

from stream.app.runtime import BatchProducer
from stream.app.topics import Topics


def test_batches_queued_without_waiting_reach_the_broker_in_call_order(settings_for, kafka):
    settings = settings_for()
    topic = Topics(settings).assignments

    async def run():
        producer = BatchProducer(settings)
        await producer.start()
        try:
            futures = []
            for i in range(40):  # many batches per partition, none awaited in between
                records = [(i % 2, b"k", f"{i}:{j}".encode()) for j in range(5)]
                futures += await producer.send_nowait(topic, records)
            return await asyncio.gather(*futures)
        finally:
            await producer.stop()

    ends = asyncio.run(run())
    got = kafka.read_all(topic)
    for partition in (0, 1):
        values = [m.value.decode() for m in sorted(got, key=lambda m: m.offset)
                  if m.partition == partition]  # fmt: skip
        want = [f"{i}:{j}" for i in range(partition, 40, 2) for j in range(5)]
        assert values == want
        # every ack's end offset is right after its own batch, in call order
        assert [end for p, end in ends if p == partition] == list(range(5, 5 * 20 + 1, 5))
