"""The hot path's check before it queues a batch's outputs: nothing is sent
behind an output of unflushed clicks that failed (no broker needed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from stream.app.hotpath import HotPath


def _futures(loop, *outcomes):
    out = []
    for outcome in outcomes:
        f = loop.create_future()
        if outcome == "ok":
            f.set_result((0, 1))
        elif outcome == "failed":
            f.set_exception(TimeoutError("no ack"))
        elif outcome == "cancelled":
            f.cancel()
        out.append(f)  # "pending": left as it is
    return out


@pytest.mark.parametrize("where", ["pending", "flush_pending"])
@pytest.mark.parametrize("bad", ["failed", "cancelled"])
def test_a_failed_output_of_unflushed_clicks_stops_the_next_batch(where, bad):
    loop = asyncio.new_event_loop()
    try:
        owned = SimpleNamespace(pending=_futures(loop, "ok", "pending"), flush_pending=[])
        HotPath._check_outputs(owned)  # acked or in flight: go on
        getattr(owned, where).extend(_futures(loop, bad))
        with pytest.raises(RuntimeError, match="output batch of unflushed clicks failed"):
            HotPath._check_outputs(owned)
    finally:
        loop.close()


def test_a_flush_sends_no_changelog_chunk_behind_one_that_failed():
    """A flush's first chunk carries its begin marker: if it failed at once,
    the chunks after it must not go out (a restore would take them for a
    whole flush)."""
    from stream.app import hotpath

    async def run():
        sent = []

        def send_nowait(topic, records):
            future = asyncio.get_running_loop().create_future()
            future.set_exception(TimeoutError("no ack"))  # fails before the next chunk
            sent.append(len(records))
            return [future]

        hp = HotPath.__new__(HotPath)
        hp.runtime = SimpleNamespace(
            topics=SimpleNamespace(changelog="changelog"),
            state_producer=SimpleNamespace(send_nowait=send_nowait),
        )
        owned = SimpleNamespace(partition=0, flush_pending=[])
        records = [(b"k%d" % i, b"v") for i in range(3 * hotpath.FLUSH_CHUNK)]
        with pytest.raises(TimeoutError):
            await hp._finish_flush(owned, records, [], 10, 1)
        return sent

    assert asyncio.run(run()) == [hotpath.FLUSH_CHUNK]
