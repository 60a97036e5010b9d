"""Workarounds for defects of the embedded broker (tansu v0.6.0-510f3e2), off on Apache Kafka.

Every workaround here applies only when the caller says the broker is the
embedded one (``embedded=True``, from the settings flag); on Apache Kafka the
standard client calls are used unchanged. Each defect is pinned by a test in
``tests/integration/test_embedded_broker_workarounds.py``, so a broker upgrade that fixes
one shows up as a failing test.

High watermarks (consumer lag, table recovery)
    ListOffsets(latest) on this broker returns the base offset of the newest
    record batch + 1, not the log end: after three batches of 10 records it
    says 21 where the log ends at 30. A Fetch response carries the true high
    watermark, so on the embedded broker :func:`high_watermarks` reads it from
    a fetch: a throw-away consumer (no group) is assigned the partitions,
    seeks to the ListOffsets answer (never past the end here, and never more
    than one batch before it, so the fetch returns at most the newest batch)
    and fetches until every partition has reported ``highwater(tp)``. That
    is kafka-python's / aiokafka's public ``highwater()`` API; a raw Fetch
    request was rejected because both clients' protocol classes changed
    incompatibly in their latest major versions (kafka-python 3 generated
    ``ApiMessage`` classes, aiokafka 0.14 version-building ``Request``
    objects). It costs a fetch round trip, so callers ask it rarely.

    A worker that already consumes a partition does not need this call: its
    own consumer's ``highwater(tp)`` after a ``getmany`` is the true log end
    (``highwater - position`` is the lag).

Fetch waits
    A Fetch with ``max_wait_ms=0`` gets an *empty* response (no partitions,
    so no records and no high watermark): never configure
    ``fetch_max_wait_ms=0``. A fetch waiting for data is re-checked only
    after about half its ``max_wait_ms``, so a record produced while a
    consumer waits is delivered up to ``max_wait_ms / 2`` late; see
    :data:`EMBEDDED_FETCH_MAX_WAIT_MS`.

Other behaviour seen on this build (nothing to work around here)
    A fetch beyond the log end returns no error (no OFFSET_OUT_OF_RANGE,
    so ``auto_offset_reset`` never fires for it) and the true high watermark.
    Metadata requests that allow auto-creation (producers, Metadata v0)
    create unknown topics with 4 partitions; kafka-python's and aiokafka's
    consumers ask for all topics and create nothing. SIGTERM waits for every
    client connection to close (see :mod:`stream.io.broker`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTopicPartition
from aiokafka.errors import KafkaError as AioKafkaError
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import KafkaError

from stream.errors import BrokerUnavailable

__all__ = [
    "EMBEDDED_FETCH_MAX_WAIT_MS",
    "EMBEDDED_HEARTBEAT_MS",
    "EMBEDDED_SESSION_TIMEOUT_MS",
    "high_watermarks",
    "high_watermarks_async",
]

EMBEDDED_SESSION_TIMEOUT_MS = 2000
"""Consumer-group session timeout to use on the embedded broker.

The broker completes a group join only after ceil(session_timeout / 2) whole
seconds, at least 1 s (with aiokafka and kafka-python alike; pinned by
``tests/integration/test_embedded_broker_workarounds.py``), and a rebalance
when a second member joins takes about one session timeout; kafka-python 3
and faust default to 45 s and 60 s. 2000 ms is the largest value with a 1 s
join. The heartbeat runs on the client's event loop / thread:
a loop blocked for longer than this (e.g. a k-means on the event loop) gets
the member evicted. faust: ``broker_session_timeout=2.0``.
"""

EMBEDDED_HEARTBEAT_MS = 500
"""Heartbeat interval matching :data:`EMBEDDED_SESSION_TIMEOUT_MS` (a quarter of it).

faust: ``broker_heartbeat_interval=0.5``.
"""

EMBEDDED_FETCH_MAX_WAIT_MS = 20
"""``fetch_max_wait_ms`` to use on the embedded broker.

A waiting fetch is re-checked only after about half its max wait, so new
records reach a caught-up consumer late, by a share of the max wait
(``test_waiting_fetch_delivers_late_unless_max_wait_is_short`` pins it;
faust's hard-coded 1500 ms is why its agents are slow here). The worker's
clicks and cf-deltas consumers wait on this at every hop of the click-to-CF
path, so it is short (``clusterstream bench e2e`` measures the latency); the
price is a little idle fetch traffic. Must not be 0 (the broker then answers
with an empty fetch response).
"""

_PROBE_FETCH_MAX_WAIT_MS = 10  # > 0: max_wait 0 gets an empty response here
_POLL_STEP_MS = 50


def high_watermarks(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    embedded: bool,
    timeout_s: float = 10.0,
    client_config: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """Log-end offset (high watermark) of each partition of ``topic``.

    Args:
        bootstrap: ``bootstrap_servers`` for kafka-python.
        topic: the topic; an unknown topic gives ``{}`` when ``partitions`` is
            ``None`` (nothing is auto-created).
        partitions: partition ids; ``None`` means all partitions of the topic.
        embedded: True on the embedded broker: read the high watermark from a
            Fetch response, because ListOffsets(latest) is wrong there. False
            (Apache Kafka): ListOffsets(latest), i.e. ``end_offsets``.
        timeout_s: overall time limit.
        client_config: extra ``KafkaConsumer`` settings (security: SASL/TLS).

    Returns ``{partition: offset of the next record}``. Raises
    :class:`~stream.errors.BrokerUnavailable` on timeouts and client errors.

    >>> from stream.io.broker import EmbeddedBroker
    >>> with EmbeddedBroker(silent=True) as broker:
    ...     high_watermarks(broker.bootstrap, "no-such-topic", embedded=True)
    {}
    """
    deadline = time.monotonic() + timeout_s
    consumer = None
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            fetch_max_wait_ms=_PROBE_FETCH_MAX_WAIT_MS,
            bootstrap_timeout_ms=_remaining_ms(deadline),
            request_timeout_ms=max(int(timeout_s * 1000), 1000),
            **dict(client_config or {}),
        )
        ids = sorted(consumer.partitions_for_topic(topic)) if partitions is None else partitions
        tps = [KafkaTopicPartition(topic, p) for p in ids]
        if not tps:
            return {}
        listed = consumer.end_offsets(tps, timeout_ms=_remaining_ms(deadline))
        if not embedded:
            return {tp.partition: listed[tp] for tp in tps}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, listed[tp])
        while missing := [tp for tp in tps if consumer.highwater(tp) is None]:
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(_no_fetch_message(topic, missing, timeout_s))
            consumer.poll(timeout_ms=min(_POLL_STEP_MS, _remaining_ms(deadline)))
        return {tp.partition: consumer.highwater(tp) for tp in tps}
    except KafkaError as exc:
        raise BrokerUnavailable(f"high watermarks of {topic!r} at {bootstrap}: {exc}") from exc
    finally:
        if consumer is not None:
            consumer.close()


async def high_watermarks_async(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    embedded: bool,
    timeout_s: float = 10.0,
    client_config: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """:func:`high_watermarks` with aiokafka, for an asyncio loop.

    Same arguments and result; ``client_config`` holds extra
    ``AIOKafkaConsumer`` settings.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=_PROBE_FETCH_MAX_WAIT_MS,
        request_timeout_ms=max(int(timeout_s * 1000), 1000),
        **dict(client_config or {}),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            # aiokafka 0.14: stop() right after start(), before the consumer's
            # NoGroup coordinator task ran once, raises CancelledError.
            await asyncio.sleep(0)
            return await _high_watermarks_aio(consumer, topic, partitions, embedded)
    except TimeoutError as exc:
        raise BrokerUnavailable(
            f"high watermarks of {topic!r} at {bootstrap}: no answer within {timeout_s:g} s"
        ) from exc
    except AioKafkaError as exc:
        raise BrokerUnavailable(f"high watermarks of {topic!r} at {bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()


async def _high_watermarks_aio(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: Iterable[int] | None,
    embedded: bool,
) -> dict[int, int]:
    """Body of :func:`high_watermarks_async` on a started consumer (no time limit)."""
    ids = sorted(consumer.partitions_for_topic(topic) or ()) if partitions is None else partitions
    tps = [AioTopicPartition(topic, p) for p in ids]
    if not tps:
        return {}
    listed = await consumer.end_offsets(tps)
    if not embedded:
        return {tp.partition: listed[tp] for tp in tps}
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    while any(consumer.highwater(tp) is None for tp in tps):
        await consumer.getmany(*tps, timeout_ms=_POLL_STEP_MS)
    return {tp.partition: consumer.highwater(tp) for tp in tps}


def _remaining_ms(deadline: float) -> int:
    return max(int((deadline - time.monotonic()) * 1000), 1)


def _no_fetch_message(topic: str, missing: list[KafkaTopicPartition], timeout_s: float) -> str:
    ids = ", ".join(str(tp.partition) for tp in missing)
    return f"no fetch response for {topic!r} partitions {ids} within {timeout_s:g} s"
