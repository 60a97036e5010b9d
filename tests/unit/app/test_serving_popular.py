"""The popular fill's sum of every cluster's top items is shared by the
requests of its depth while it is read and for ``popular_cache_s`` after (Server.popular): the tables are read
once, not once per new user. The owners' answers come from a counting
``top_items``; what reads them for real is covered by
tests/integration/test_jobs.py (a never-seen user's items)."""

from __future__ import annotations

import asyncio

import numpy as np

from stream.app.runtime import Runtime
from stream.app.serving import Server
from stream.core.centres import CentreSet
from stream.settings import Settings


def _server(tmp_path, **settings) -> tuple[Server, list[tuple[int, int]]]:
    runtime = Runtime.create(Settings(data_dir=tmp_path, dim=2, **settings))
    runtime.centres = CentreSet.create(np.eye(2), created_at_ms=0)  # clusters 0, 1 and -1
    server = Server(runtime, None, None, None)
    reads: list[tuple[int, int]] = []

    async def top_items(cluster_id: int, n: int):
        reads.append((cluster_id, n))
        await asyncio.sleep(0.01)  # an owner over HTTP
        return [(f"i{cluster_id + 1}", float(cluster_id + 2)), ("both", 1.0)][:n]

    server.top_items = top_items
    return server, reads


def test_requests_within_the_cache_time_share_one_sum_of_their_depth(tmp_path):
    server, reads = _server(tmp_path, popular_cache_s=60.0)

    async def run():
        many = await asyncio.gather(*(server.popular(200) for _ in range(5)))
        again = await server.popular(200)
        shallow = await server.popular(1)  # another depth: its own sum, as eval's
        return many, again, shallow

    many, again, shallow = asyncio.run(run())
    assert all(m == {"i0": 1.0, "i1": 2.0, "i2": 3.0, "both": 3.0} for m in many)
    assert again == many[0]
    assert shallow == {"i0": 1.0, "i1": 2.0, "i2": 3.0}
    assert sorted(reads) == sorted([(c, 200) for c in (-1, 0, 1)] + [(c, 1) for c in (-1, 0, 1)])


def test_no_cache_time_sums_per_request_and_a_stale_sum_is_read_again(tmp_path):
    server, reads = _server(tmp_path, popular_cache_s=0.0)
    asyncio.run(server.popular(200))
    asyncio.run(server.popular(200))
    assert len(reads) == 6  # three tables, twice

    async def together():  # a sum being read is shared even with 0
        await asyncio.gather(server.popular(200), server.popular(200))

    asyncio.run(together())
    assert len(reads) == 9
    server, reads = _server(tmp_path, popular_cache_s=0.05)

    async def run():
        await server.popular(200)
        await asyncio.sleep(0.1)
        await server.popular(200)

    asyncio.run(run())
    assert len(reads) == 6


def test_a_failed_sum_is_not_kept_and_a_cancelled_request_does_not_end_the_sum(tmp_path):
    server, reads = _server(tmp_path, popular_cache_s=60.0)
    runtime = server.runtime
    centres, runtime.centres = runtime.centres, object()  # no cluster ids to read

    async def run():
        try:
            await server.popular(200)
        except AttributeError:
            pass
        else:
            raise AssertionError("the sum did not fail")
        runtime.centres = centres
        first = asyncio.ensure_future(server.popular(200))
        await asyncio.sleep(0.001)  # the sum is being read
        first.cancel()  # a client went away
        return await server.popular(200)

    assert asyncio.run(run()) == {"i0": 1.0, "i1": 2.0, "i2": 3.0, "both": 3.0}
    assert len(reads) == 3  # the failed sum read nothing; the cancelled one served the last
