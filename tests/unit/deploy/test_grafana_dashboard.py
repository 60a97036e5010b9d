"""deploy/grafana/clusterstream.json: valid JSON with panels, over the agreed metric names only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "clusterstream.json"

# the names agreed for /metrics (histograms also expose _bucket, _sum and _count)
COUNTERS = {
    "clusterstream_events_total",
    "clusterstream_dlq_records_total",
    "clusterstream_flush_rows_total",
    "clusterstream_send_failures_total",
    "clusterstream_membership_changes_total",
    "clusterstream_drift_detections_total",
    "clusterstream_job_runs_total",
    "clusterstream_users_expired_total",
    "clusterstream_rebalances_total",
}
HISTOGRAMS = {
    "clusterstream_batch_duration_seconds",
    "clusterstream_click_to_cf_seconds",
    "clusterstream_flush_duration_seconds",
    "clusterstream_job_duration_seconds",
}
GAUGES = {
    "clusterstream_consumer_lag_records",
    "clusterstream_centres_version",
    "clusterstream_centres_age_seconds",
    "clusterstream_clusters",
    "clusterstream_cluster_members",
    "clusterstream_assignment_distance_mean",
    "clusterstream_cf_items",
    "clusterstream_user_rows",
    "clusterstream_rocksdb_sst_bytes",
    "clusterstream_item_vector_coverage",
}
AGREED = COUNTERS | GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
PROCESS = re.compile(r"process_[a-z_]+")

# PromQL words that are not metric names
PROMQL = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "irate", "increase",
    "histogram_quantile", "changes", "delta", "and", "or", "unless", "bool", "offset",
    "topk", "bottomk", "quantile", "abs", "clamp_min", "clamp_max", "label_values",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left once label matchers,
    strings, ranges, grouping clauses, numbers and PromQL words are removed.

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{job=~"$job"}[5m])) / b'))
    ['a_bucket', 'b']
    >>> metric_names("label_values(c_total, job)")
    {'c_total'}
    """
    expr = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", expr)  # (metric, label)
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL}


def _exprs(node) -> list[str]:
    """Every PromQL expression in the dashboard (panel targets, annotations, variables)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" or (key == "query" and isinstance(value, str) and "(" in value):
                found.append(value)
            elif key == "definition":
                found.append(value)
            else:
                found += _exprs(value)
    elif isinstance(node, list):
        for value in node:
            found += _exprs(value)
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_it_is_a_dashboard_with_panels_that_query_something(dashboard):
    assert dashboard["uid"] == "clusterstream" and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"][
            "w"
        ] <= 24


def test_every_metric_it_queries_is_an_agreed_name(dashboard):
    exprs = _exprs(dashboard)
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        unknown = {n for n in names if n not in AGREED and not PROCESS.fullmatch(n)}
        assert not unknown, f"{expr}: not an agreed metric name: {unknown}"
        used |= names
    # histograms are read through their buckets, never by their bare names
    assert not used & HISTOGRAMS
    # every agreed series shows somewhere
    assert {n for n in used if n.startswith("clusterstream_")} >= COUNTERS | GAUGES
    assert {h for h in HISTOGRAMS if f"{h}_bucket" in used} == HISTOGRAMS


def test_it_mirrors_the_page(dashboard):
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for what in (
        "throughput", "lag", "batch latency", "freshness", "cluster sizes", "churn",
        "assignment distance", "centre versions", "dead letters", "worker",
    ):  # fmt: skip
        assert what in titles, what
    marks = {a["name"] for a in dashboard["annotations"]["list"]}
    assert {"merge", "recompute", "drift"} <= marks


def test_a_name_outside_the_list_is_caught():
    assert metric_names("rate(clusterstream_clicks_total[1m])") == {"clusterstream_clicks_total"}
    assert "clusterstream_clicks_total" not in AGREED
    assert metric_names("up") == {"up"}
