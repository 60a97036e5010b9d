"""Kafka client settings and topic administration, shared by every command.

Every client (aiokafka in the worker, kafka-python in the CLI and the admin)
gets the same bootstrap servers and security settings from
:class:`stream.settings.Settings`; the two libraries spell TLS differently,
which is the only reason there are two functions.

>>> from stream.settings import Settings
>>> aiokafka_config(Settings(bootstrap_servers="b:9092"))["bootstrap_servers"]
'b:9092'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import BrokerUnavailable
from stream.settings import Settings

logger = logging.getLogger(__name__)


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer / AIOKafkaProducer."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_secret()
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        config["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
        )
    return config


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaConsumer / KafkaProducer / admin."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_secret()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(settings, name):
            config[name] = getattr(settings, name)
    return config


def bootstrap_wait(client_class: type, wait_s: float) -> dict[str, int]:
    """The keyword that bounds how long a kafka-python ``client_class`` (producer,
    consumer, admin) waits for its first broker answer: ``bootstrap_timeout_ms``
    from kafka-python 3 on, ``api_version_auto_timeout_ms`` before."""
    if "bootstrap_timeout_ms" in client_class.DEFAULT_CONFIG:
        return {"bootstrap_timeout_ms": int(wait_s * 1000)}
    return {"api_version_auto_timeout_ms": int(wait_s * 1000)}


@dataclass(frozen=True)
class TopicSpec:
    """A topic this app owns: full name, partitions, and whether it is compacted."""

    name: str
    partitions: int
    compacted: bool = False


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are (their partition counts are not
    changed). Raises :class:`BrokerUnavailable` when the broker cannot be reached.
    """
    specs = list(specs)
    try:
        admin = KafkaAdminClient(
            client_id=f"{settings.app_id}-admin", **kafka_python_config(settings)
        )
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}"
        ) from exc
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if s.compacted else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker created them first
            logger.info("created topics %s", [t.name for t in new])
        return [t.name for t in new]
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot create topics at {settings.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        admin.close()


# topics no aiokafka client of this process asks the broker to create (see below)
_NOT_AUTO_CREATED: set[str] = set()


def no_topic_auto_creation(topics: Iterable[str]) -> bool:
    """Make this process's aiokafka clients ask for the metadata of
    ``topics`` without asking the broker to create them (aiokafka always
    asks). A broker that came back empty (the embedded one) would otherwise
    create each topic a client asks about with its own default partition
    count (4 on the embedded broker) before the worker re-creates its topics
    with theirs: clicks would then be spread over partitions whose users'
    state lives elsewhere. The worker creates these topics itself
    (:func:`ensure_topics`); other topics (faust's own) are left as they
    were. False when this aiokafka has no ``client.MetadataRequest`` of the
    expected shape."""
    from aiokafka import client
    from aiokafka.protocol.metadata import MetadataRequest

    _NOT_AUTO_CREATED.update(topics)
    current = getattr(client, "MetadataRequest", None)
    if getattr(current, "keeps_topics", False):
        return True
    if current is not MetadataRequest:
        logger.warning("aiokafka's client has another MetadataRequest: topics may be auto-created")
        return False

    class KeepsTopics(MetadataRequest):
        keeps_topics = True

        def __init__(self, topics=None, allow_auto_topic_creation=None):
            if allow_auto_topic_creation is None and topics:
                allow_auto_topic_creation = _NOT_AUTO_CREATED.isdisjoint(topics)
            super().__init__(topics, allow_auto_topic_creation)

    client.MetadataRequest = KeepsTopics
    return True


class Seeks:
    """Seeks per partition of a batch loop's consumer. A loop that fetched a
    batch and then waited for its lock may find that a seek happened in
    between (a rebalance listener, the broker coming back empty): the batch
    was read for the old position and must not be handled, and the consumer
    may have moved past the new one (a second fetch after the seek).

    >>> seeks = Seeks()
    >>> before = seeks.snapshot()
    >>> seeks.count(3)
    >>> seeks.moved(before, 3), seeks.moved(before, 0)
    (True, False)
    """

    def __init__(self):
        self._counts: dict[int, int] = {}

    def count(self, partition: int) -> None:
        self._counts[partition] = self._counts.get(partition, 0) + 1

    def seek(self, consumer, tp, offset: int) -> None:
        """``consumer.seek(tp, offset)``, counted."""
        self.count(tp.partition)
        consumer.seek(tp, offset)

    def snapshot(self) -> dict[int, int]:
        """Take before a fetch; :meth:`moved` says which partitions were sought since."""
        return dict(self._counts)

    def moved(self, snapshot: dict[int, int], partition: int) -> bool:
        return self._counts.get(partition, 0) != snapshot.get(partition, 0)


def batch_loop_consumer(
    settings: Settings, role: str, lean: bool = False, fetch_max_wait_ms: int | None = None
):
    """The consumer of one of the worker's batch loops (clicks, cf-deltas): group and
    client id ``<app_id>-<role>``, offsets committed by the loop, positions set by
    the loop (no automatic reset), fetch wait ``batch_wait_ms`` (the embedded broker's
    workaround value on that broker), session settings from ``settings``. Not
    started; the caller subscribes with its rebalance listener. ``lean``: each
    partition's fetch comes as one :class:`~stream.io.fetched.FetchedRecords`
    (:mod:`stream.io.aiokafka_fetcher_patch`; ordinary records where aiokafka's fetcher has
    another shape): read ``getmany``'s parts with ``FetchedRecords.gather``.
    ``fetch_max_wait_ms`` overrides the fetch wait (see
    :func:`stream.app.stallwatch.restart_consumer`)."""
    from aiokafka import AIOKafkaConsumer

    from stream.io import aiokafka_fetcher_patch
    from stream.io.embedded_broker_workarounds import EMBEDDED_FETCH_MAX_WAIT_MS

    extra = {}
    if lean and aiokafka_fetcher_patch.install():
        extra["value_deserializer"] = aiokafka_fetcher_patch.LEAN_VALUES
    return AIOKafkaConsumer(
        group_id=f"{settings.app_id}-{role}",
        client_id=f"{settings.app_id}-{role}",
        enable_auto_commit=False,
        # no silent reset: a position the log no longer has is the loop's
        # decision (stream.app.brokerwatch.resume_after_out_of_range)
        auto_offset_reset="none",
        fetch_max_wait_ms=fetch_max_wait_ms
        or (EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else settings.batch_wait_ms),
        max_partition_fetch_bytes=8 << 20,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        **aiokafka_config(settings),
        **extra,
    )


async def read_to_end(settings: Settings, topic: str, on_batch, max_records: int = 100_000) -> int:
    """Read every partition of ``topic`` from the beginning to its current end,
    calling ``on_batch(list of records)`` in offset order per partition; returns
    the number of records read. High watermarks come from
    :func:`stream.io.embedded_broker_workarounds.high_watermarks_async` (right on the
    embedded broker too)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.io.embedded_broker_workarounds import (
        EMBEDDED_FETCH_MAX_WAIT_MS,
        high_watermarks_async,
    )

    config = aiokafka_config(settings)
    ends = await high_watermarks_async(
        settings.bootstrap_servers, topic, embedded=settings.embedded_broker,
        client_config={k: v for k, v in config.items() if k != "bootstrap_servers"},
    )  # fmt: skip
    remaining = {TopicPartition(topic, p): end for p, end in ends.items() if end > 0}
    if not remaining:
        return 0
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=32 << 20,
        fetch_max_bytes=64 << 20,
        **config,
    )
    await consumer.start()
    read = 0
    try:
        consumer.assign(list(remaining))
        await consumer.seek_to_beginning(*remaining)
        while remaining:
            got = await consumer.getmany(*remaining, timeout_ms=500, max_records=max_records)
            for tp, msgs in got.items():
                msgs = [m for m in msgs if m.offset < remaining[tp]]
                read += len(msgs)
                if msgs and msgs[-1].offset + 1 >= remaining[tp]:
                    del remaining[tp]
                if msgs:
                    on_batch(msgs)
    finally:
        await consumer.stop()
    return read
