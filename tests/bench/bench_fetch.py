"""Benchmark of the clicks loop's fetch (a script, not a test).

Starts the embedded broker, pre-loads ``--n`` synthetic clicks on two
partitions, and reads them with a bare ``getmany`` loop (8 MB partition
fetches, batches of 8192, garbage collector frozen as in the worker), in two
ways: aiokafka's ``ConsumerRecord`` objects, and the columns of
:mod:`stream.io.aiokafka_fetcher_patch`. Each way is timed bare and with the values
decoded (:func:`stream.wire.clicks.decode_clicks`). Prints one JSON line with
the median microseconds a click of ``--repeats`` runs of each.

    python tests/bench/bench_fetch.py [--n 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.bench.e2e import click_records, produce, user_partitions
from stream.io import aiokafka_fetcher_patch
from stream.io.broker import EmbeddedBroker
from stream.io.embedded_broker_workarounds import EMBEDDED_FETCH_MAX_WAIT_MS
from stream.io.fetched import FetchedRecords
from stream.io.synth import SynthConfig, generate
from stream.wire.clicks import decode_clicks

BATCH = 8192


async def read_all(bootstrap: str, topic: str, n: int, columns: bool, decode: bool) -> float:
    """Seconds to read (and decode) the ``n`` clicks of ``topic``."""
    extra = {"value_deserializer": aiokafka_fetcher_patch.LEAN_VALUES} if columns else {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS, max_partition_fetch_bytes=8 << 20, **extra,
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        started = time.perf_counter()
        while got < n:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            for parts in fetched.values():
                if columns:
                    records = FetchedRecords.gather(parts)
                    got += len(records)
                    for piece in records.pieces(BATCH) if decode else ():
                        decode_clicks(piece)
                else:
                    got += len(parts)
                    if decode:
                        decode_clicks([m.value for m in parts])
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not aiokafka_fetcher_patch.install():
        raise SystemExit("aiokafka's fetcher is not the shape aiokafka_fetcher_patch expects")
    data = generate(
        SynthConfig(n_users=20_000, n_clusters=64, n_items=5000, dim=64, n_events=args.n, seed=0)
    )
    out = {"n": args.n, "repeats": args.repeats}
    with EmbeddedBroker() as broker:
        produce(broker.bootstrap, "clicks", click_records(data, user_partitions(data.user_ids, 2)))
        asyncio.run(read_all(broker.bootstrap, "clicks", args.n, True, True))  # compile, warm
        gc.collect()
        gc.freeze()
        for decode in (False, True):
            for columns in (False, True):
                runs = [
                    asyncio.run(read_all(broker.bootstrap, "clicks", args.n, columns, decode))
                    for _ in range(args.repeats)
                ]
                name = (
                    f"{'columns' if columns else 'consumer_records'}{'_decode' if decode else ''}"
                )
                out[f"{name}_us"] = round(statistics.median(runs) / args.n * 1e6, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
