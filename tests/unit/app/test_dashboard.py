"""The dashboard's sampling, merging and fan-out (no broker: a worker that is never started)."""

from __future__ import annotations

import asyncio
import re
import time
from importlib import resources

import pytest

from stream.app import dashboard
from stream.app.app import Worker
from stream.app.dashboard import Dashboard, Sampler, merge_series, size_histogram
from stream.app.runtime import Runtime
from stream.core.centres import CentreSet
from stream.io.broker import free_port
from stream.settings import Settings


@pytest.fixture
def worker(tmp_path):
    w = Worker(Runtime.create(Settings(data_dir=tmp_path, web_port=free_port(), dim=2)))
    yield w
    w.hotpath.executor.shutdown()
    w.jobs.executor.shutdown()


def test_samples_are_rates_and_means_over_the_interval(worker):
    sampler = Sampler(worker, now=100.0)
    c = worker.runtime.counters
    c.events_applied, c.events_rejected, c.assignments_emitted = 400, 10, 60
    c.batches, c.batch_seconds = 4, 0.02
    s = sampler.sample(102.0)
    assert (s["applied_per_s"], s["rejected_per_s"], s["churn_per_s"]) == (200.0, 5.0, 30.0)
    assert s["batch_ms"] == 5.0
    assert s["freshness_s"] is None and s["version"] is None
    s = sampler.sample(104.0)  # nothing happened
    assert (s["applied_per_s"], s["batch_ms"]) == (0.0, None)
    assert [x["t"] for x in sampler.series()["samples"]] == [102.0, 104.0]


def test_the_ring_buffer_keeps_the_newest_samples(worker):
    sampler = Sampler(worker, keep=3, now=0.0)
    for i in range(1, 10):
        sampler.sample(float(i))
    assert [s["t"] for s in sampler.samples] == [7.0, 8.0, 9.0]


def test_centre_sets_and_drift_become_events(worker):
    sampler = Sampler(worker, now=8.0)
    centres = CentreSet.create([[1.0, 0.0], [0.0, 1.0]], reason="bootstrap", created_at_ms=5000)
    assert worker.runtime.install_centres(centres)
    sampler.sample(10.0)
    worker.runtime.counters.drift_detections += 1
    sampler.sample(12.0)
    events = sampler.series()["events"]
    assert events[0] == {"t": 5.0, "kind": "bootstrap", "version": 1}
    assert events[1]["kind"] == "drift" and events[1]["t"] == 12.0
    assert sampler.series()["samples"][-1]["version"] == 1


def test_dead_letters_are_counted_by_reason(worker):
    worker.runtime.counters.count_dead_letters(
        ["invalid JSON", "missing field: ts", "invalid JSON"]
    )
    assert Sampler(worker).series()["dlq"] == {"invalid JSON": 2, "missing field: ts": 1}


def test_merge_sums_rates_takes_the_worst_latency_and_averages_distance():
    a = [{"t": 100.5, "applied_per_s": 10.0, "lag": 2, "batch_ms": 3.0, "distance": 0.2},
         {"t": 102.5, "applied_per_s": 12.0, "lag": 0, "batch_ms": None, "distance": 0.2}]  # fmt: skip
    b = [{"t": 101.0, "applied_per_s": 5.0, "lag": 7, "batch_ms": 9.0, "distance": 0.4}]
    merged = merge_series([a, b], 2.0)
    assert merged[0] == {
        "t": 100.0, "applied_per_s": 15.0, "lag": 9, "batch_ms": 9.0, "distance": 0.3
    }  # fmt: skip
    assert merged[1] == {
        "t": 102.0, "applied_per_s": 12.0, "lag": 0, "batch_ms": None, "distance": 0.2
    }  # fmt: skip


def test_two_samples_of_one_worker_in_one_slot_count_once():
    # a late timer then an early one: both land in the slot at 10 s
    a = [{"t": 10.1, "dt": 3.0, "applied_per_s": 100.0, "lag": 5, "batch_ms": 2.0},
         {"t": 11.9, "dt": 1.0, "applied_per_s": 300.0, "lag": 1, "batch_ms": 1.0}]  # fmt: skip
    b = [{"t": 11.0, "dt": 2.0, "applied_per_s": 50.0, "lag": 2, "batch_ms": 7.0}]
    (point,) = merge_series([a, b], 2.0)
    # a's rate over its 4 s (600 clicks), plus b's; a's newest lag plus b's
    assert point == {"t": 10.0, "applied_per_s": 200.0, "lag": 3, "batch_ms": 7.0}


def test_size_histogram_covers_every_cluster_once():
    sizes = {c: (c * 37) % 101 + 1 for c in range(50)}
    bins = size_histogram(sizes, bins=12)
    assert sum(b["clusters"] for b in bins) == 50
    assert bins[0]["lo"] == min(sizes.values()) and bins[-1]["hi"] == max(sizes.values())
    assert all(a["hi"] + 1 == b["lo"] for a, b in zip(bins, bins[1:], strict=False))
    assert size_histogram({}) == []
    assert size_histogram({4: 9, 5: 9}) == [{"lo": 9, "hi": 9, "clusters": 2}]


def test_events_of_a_centre_set_count_once_however_many_workers_saw_it():
    a = {"events": [{"t": 1.0, "kind": "merge", "version": 2}, {"t": 3.0, "kind": "drift"}]}
    b = {"events": [{"t": 1.0, "kind": "merge", "version": 2}, {"t": 4.0, "kind": "drift"}]}
    events = dashboard._merge_events([a, b])
    assert [(e["kind"], e["t"]) for e in events] == [("merge", 1.0), ("drift", 3.0), ("drift", 4.0)]


def test_a_registered_worker_that_does_not_answer_is_marked(worker):
    sampler = Sampler(worker, now=time.time() - 2)
    sampler.sample()
    dead_port = free_port()
    worker.registry.update(
        {"worker_id": "ghost", "url": f"http://127.0.0.1:{dead_port}", "leader": False,
         "clicks_partitions": [1], "cf_partitions": [], "sizes": {}, "users": 0,
         "ts": time.time()}
    )  # fmt: skip

    async def gather():
        try:
            return await Dashboard(worker, sampler).data()
        finally:
            await worker.server.close()

    data = asyncio.run(gather())
    rows = {w["worker_id"]: w for w in data["workers"]}
    assert rows["ghost"]["answered"] is False and "ClientConnectorError" in rows["ghost"]["error"]
    assert rows["ghost"]["partitions"] == [1]
    assert rows[worker.worker_id]["answered"] is True
    assert len(data["series"]) == 1 and data["top"] == [] and data["centres"] is None


def test_the_page_loads_only_its_own_assets():
    static = resources.files("stream.app") / "static"
    page = (static / "dashboard.html").read_text()
    for name in ("dashboard.js", "dashboard.css"):
        assert f"/dashboard/static/{name}" in page
        assert (static / name).is_file() and name in dashboard.STATIC
    for text in (page, (static / "dashboard.js").read_text()):
        assert not re.search(r"(src|href)=\"(https?:)?//", text)
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    charts = re.findall(r'data-chart="(\w+)"', page)
    assert charts == ["throughput", "latency", "churn", "versions", "sizes", "dlq", "top"]
