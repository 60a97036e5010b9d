"""Helpers of the e2e benchmark that its figures rely on."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from stream.bench.e2e import _fill_batches

pytestmark = pytest.mark.broker


def test_a_tick_with_more_clicks_than_one_batch_holds_goes_out_whole(bootstrap):
    # the latency run's producer once dropped what did not fit in one batch
    records = [(0, f"u{i}".encode(), b"x" * 100) for i in range(60)]
    idx = list(range(5, 60))

    async def fill():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1024)
        await producer.start()
        try:
            parts = _fill_batches(producer, records, idx)
            return [(batch.record_count(), held) for batch, held in parts]
        finally:
            await producer.stop()

    parts = asyncio.run(fill())
    assert len(parts) > 1
    assert [i for _, held in parts for i in held] == idx
    assert all(count == len(held) for count, held in parts)


def test_the_poller_reads_stats_and_metrics_and_drops_a_missing_dashboard():
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from stream.bench.e2e import Poller

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            found = self.path in ("/stats", "/metrics")
            self.send_response(200 if found else 404)
            self.end_headers()
            self.wfile.write(b"{}" if found else b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        poller = Poller([f"http://127.0.0.1:{server.server_port}"], hz=20)
        poller.start()
        time.sleep(0.5)
        poller.stop()
        stopped_at = len(hits)
        time.sleep(0.2)
    finally:
        server.shutdown()
    assert len(hits) == stopped_at  # nothing after stop()
    assert hits.count("/dashboard") == 1  # a 404 drops the path
    assert hits.count("/stats") >= 3 and hits.count("/metrics") >= 3
    assert poller.as_dict() == {
        "requests": hits.count("/stats") + hits.count("/metrics"),
        "errors": 0,
        "paths": ["/stats", "/metrics"],
    }
