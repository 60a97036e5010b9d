"""One partitioner: the clients' default, for users and clusters alike."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from stream.wire.partition import cluster_partition, partition_of, user_partition


def test_partition_of_is_the_clients_default_partitioner():
    # aiokafka's producer partitions with its own murmur2: the independent reference
    aio = DefaultPartitioner()
    for key in (b"u1", b"ann", "ü-ñ".encode(), b"x" * 200, b"17", b""):
        for n in (1, 2, 3, 7):
            parts = list(range(n))
            assert partition_of(key, n) == aio(key, parts, parts)


def test_users_and_clusters_are_pinned_to_the_same_partitions_as_before():
    users = [user_partition(u, n) for u in ("u1", "ann", "ü-ñ", "x" * 200) for n in (1, 2, 7)]
    assert users == [0, 0, 5, 0, 0, 0, 0, 0, 6, 0, 1, 4]
    assert [cluster_partition(c, 4) for c in (0, 1, 17, 123456)] == [0, 3, 0, 0]
    assert cluster_partition(17, 4) == partition_of(b"17", 4)
    assert user_partition("ü-ñ", 7) == partition_of("ü-ñ".encode(), 7)
