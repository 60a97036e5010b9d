"""Kafka's default partitioner, the one rule every producer here follows.

A keyed record goes to ``(murmur2(key) & 0x7fffffff) % partitions``, as in
the Java client and kafka-python / aiokafka, so records produced by any of
them (and the HTTP router looking for an owner) agree on where a key lives.
Clicks, assignments and the users changelog are keyed by the UTF-8 user id;
cf-deltas and cluster-candidates by the decimal cluster id.

>>> partition_of(b"u1", 4) == user_partition("u1", 4) < 4
True
>>> cluster_partition(17, 4) == partition_of(b"17", 4)
True
"""

from __future__ import annotations

from functools import lru_cache

from kafka.partitioner.default import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """Partition of a record with ``key`` among ``partitions``: Kafka's default
    (murmur2 of the key bytes, sign bit cleared)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def user_partition(user_id: str, partitions: int) -> int:
    """Partition of a user's records (clicks, assignments, changelog): the UTF-8 id."""
    return partition_of(user_id.encode("utf-8"), partitions)


@lru_cache(maxsize=65536)
def cluster_partition(cluster_id: int, partitions: int) -> int:
    """Partition of a cluster's records (cf-deltas, candidates): the decimal id;
    cached because the hot path asks it for the same few clusters every batch."""
    return partition_of(str(cluster_id).encode(), partitions)
