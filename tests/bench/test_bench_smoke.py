"""Smoke sizes of the ``clusterstream bench`` commands (CI): they run, and the
last stdout line is one JSON object with the documented figures.

The figures themselves are not checked against goals here: at these sizes
they mean nothing (a benchmark is not a timed test).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


def _bench(*args: str, timeout: float = 120) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-4000:]
    return json.loads(lines[-1])


def _positive(result: dict, *names: str) -> None:
    for name in names:
        value = result.get(name)
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)


def test_bench_core_smoke():
    result = _bench(
        "core", "--users", "2000", "--k", "16", "--events", "5000", "--items", "500",
        "--river-events", "50", "--json", "--no-progress",
    )  # fmt: skip
    assert result["benchmark"] == "core"
    _positive(
        result, "events_per_s", "sklearn_events_per_s", "river_events_per_s", "ratio_vs_sklearn",
        "ratio_vs_river", "peak_rss_mb",
    )  # fmt: skip


def test_bench_recompute_smoke():
    result = _bench("recompute", "--users", "3000", "--k", "16", "--json")
    assert result["benchmark"] == "recompute"
    assert result["users"] == 3000 and result["k"] == 16
    _positive(result, "seconds", "seconds_kmeans", "peak_rss_mb")


@pytest.mark.broker
def test_bench_e2e_smoke():
    result = _bench(
        "e2e", "--events", "3000", "--users", "500", "--items", "300", "--k", "8",
        "--latency-events", "500", "--json", "--no-progress",
    )  # fmt: skip
    assert result["benchmark"] == "e2e"
    assert result["state"] == "rocksdb"
    assert result["n_events"] == 3000
    _positive(
        result, "events_per_s", "raw_consumer_events_per_s", "faust_per_event_events_per_s",
        "ratio_vs_raw", "ratio_vs_faust", "p50_latency_ms", "p99_latency_ms",
        "latency_visible_fraction", "peak_rss_mb", "cores",
    )  # fmt: skip
    assert result["latency_visible_fraction"] > 0.9
    assert result["worker_stats"]["events_applied"] == 3000
    for name in ("partitions", "batch_size", "dim", "k"):
        _positive(result["settings"], name)
    for phase in ("preload", "raw_consumer", "faust", "catch_up", "latency_produce", "total"):
        _positive(result["seconds"], phase)
    assert set(result["goals"]) >= {"ratio_vs_raw", "ratio_vs_faust", "p99_latency_ms"}
