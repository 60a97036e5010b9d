"""``make bench`` at smoke size (CI): every benchmark runs through the same
runner as the full report (``python -m stream.bench.report --smoke``), the
last stdout line of each is one JSON object with the documented figures, and
the markdown report is generated from those files.

The figures themselves are not checked against goals here: at these sizes
they mean nothing (a benchmark is not a timed test).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from stream.bench.report import BENCHMARKS
from stream.offline.evaluate import BASELINES, METHODS

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.bench.report", "--smoke", "--results", str(out / "json"),
         "--out", str(out / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = {p.stem: json.loads(p.read_text()) for p in (out / "json").glob("*.json")}
    return results, (out / "BENCHMARKS.md").read_text()


def _positive(result: dict, *names: str) -> None:
    for name in names:
        value = result.get(name)
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)


def test_every_benchmark_ran_with_its_command(report):
    results, _ = report
    assert set(results) == set(BENCHMARKS)
    for name, result in results.items():
        assert result["_command"].startswith("clusterstream "), name
        _positive(result, "_wall_seconds")


def test_core(report):
    result = report[0]["core"]
    assert result["benchmark"] == "core"
    _positive(
        result, "events_per_s", "sklearn_events_per_s", "river_events_per_s", "ratio_vs_sklearn",
        "ratio_vs_river", "peak_rss_mb",
    )  # fmt: skip
    passes = result["passes_events_per_s"]
    assert len(passes) == len(result["passes_sklearn_events_per_s"]) == result["repeat"] >= 1
    assert min(passes) <= result["events_per_s"] <= max(passes)  # the median pass
    assert result["threads"] == 2  # the user phase on both cores, as the default says


@pytest.mark.parametrize("name", ["recompute", "recompute-kafka"])
def test_recompute(report, name):
    result = report[0][name]
    assert result["benchmark"] == "recompute"
    assert result["users"] == 3000 and result["k"] == 16
    _positive(result, "seconds", "seconds_kmeans", "peak_rss_mb")
    if name == "recompute-kafka":
        _positive(result, "seconds_read")


@pytest.mark.parametrize("name", ["e2e", "e2e-cf-via-broker", "e2e-1m-users"])
def test_e2e(report, name):
    result = report[0][name]
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
    for field in ("partitions", "batch_size", "dim", "k"):
        _positive(result["settings"], field)
    for phase in ("preload", "raw_consumer", "faust", "catch_up", "latency_produce", "total"):
        _positive(result["seconds"], phase)
    assert set(result["goals"]) >= {"ratio_vs_raw", "ratio_vs_faust", "p99_latency_ms"}
    passes = result["passes_events_per_s"]
    assert len(passes) == result["repeat"] == (2 if name == "e2e" else 1)
    # the median pass (the slower middle one): with two passes, the slower
    assert result["events_per_s"] == sorted(passes)[(len(passes) - 1) // 2]
    p99s = result["latency_passes_p99_ms"]
    assert len(p99s) == result["latency_repeat"] == (2 if name == "e2e" else 1)
    assert len(result["latency_passes_p50_ms"]) == len(p99s)
    # the median latency pass (the worse middle one): with two passes, the worse
    assert result["p99_latency_ms"] == max(p99s)
    assert result["p50_latency_ms"] in result["latency_passes_p50_ms"]


def test_e2e_cf_deltas_in_process_or_through_the_broker(report):
    local = report[0]["e2e"]["latency_worker_stats"]
    via = report[0]["e2e-cf-via-broker"]["latency_worker_stats"]
    assert (
        report[0]["e2e"]["cf_apply_local"] and not report[0]["e2e-cf-via-broker"]["cf_apply_local"]
    )
    # one worker owns every cf-deltas partition: its deltas come back only as echoes
    assert local["cf_deltas_local"] > 0 and local["cf_deltas_echo"] > 0
    assert local["cf_deltas_applied"] < local["cf_deltas_echo"]
    assert via["cf_deltas_local"] == via["cf_deltas_echo"] == 0 and via["cf_deltas_applied"] > 0


def test_e2e_two_workers(report):
    result = report[0]["e2e-2-workers"]
    assert result["workers"] == 2
    stats = result["worker_stats"]
    assert len(stats) == 2
    assert sum(s["events_applied"] for s in stats) == 3000
    assert result["users_held"] == sum(s["users"] for s in stats) > 0
    assert 0 <= result["events_applied_before_clock"] < 3000
    assert result["events_per_s"] > 0 and result["raw_consumer_events_per_s"] > 0


@pytest.mark.parametrize(("name", "clicks"), [("eval", 4000), ("eval-embed", 4000),
                                              ("eval-sparse", 6000)])  # fmt: skip
def test_eval(report, name, clicks):
    result = report[0][name]
    assert result["clicks"] == clicks
    assert set(result["methods"]) == set(METHODS)
    assert result["best_baseline"] in BASELINES
    assert set(result["vs_best_baseline"]) == set(METHODS)
    assert 0 <= result["item_vector_coverage"]["clicks"] <= 1
    for m in result["methods"].values():
        assert 0 <= m["mrr"] <= m["hit_rate"] <= 1
    assert "ari" in result["clusters"]["after_recompute"]
    assert "user_churn_with_matching" in result["recompute_id_churn"]
    assert set(result["jobs"]) >= {"recomputes", "merges", "ids_new", "ids_merged"}
    assert result["_data_command"].startswith("clusterstream synth DATA ")


def test_markdown_quotes_the_json(report):
    results, markdown = report
    assert markdown.startswith("# Benchmarks")
    for result in results.values():
        assert f"`{result['_command']}`" in markdown
    assert (
        f"| ratio vs scikit-learn (goal >= 2) | {results['core']['ratio_vs_sklearn']} |" in markdown
    )
    engine = results["eval"]["methods"]["engine"]
    assert f"| engine | {engine['hit_rate']} | {engine['ndcg']} |" in markdown
    for name, bucket in results["eval"]["by_history"].items():
        row = f"| {name} | {bucket['evaluated']} | {bucket['methods']['engine']['hit_rate']} |"
        assert row in markdown
    assert markdown.count("## ") == len(BENCHMARKS)
