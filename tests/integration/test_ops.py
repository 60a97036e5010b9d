"""The ops surface of a running worker: /metrics, /healthz, /readyz, admin auth,
query bounds, and that no secret leaks into an answer or a log."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.core.centres import CentreSet
from stream.io.synth import SynthConfig, generate
from tests.integration.helpers import caught_up, send_clicks, start_worker

pytestmark = pytest.mark.broker

DIM = 16
TOKEN = "tok-planted-7f3c9a1e55"
SASL_PASSWORD = "sasl-planted-0b8d2c4f91"

# the agreed names (without a counter's _total) and their types
EXPECTED = {
    "clusterstream_events": "counter",
    "clusterstream_dlq_records": "counter",
    "clusterstream_batch_duration_seconds": "histogram",
    "clusterstream_click_to_cf_seconds": "histogram",
    "clusterstream_consumer_lag_records": "gauge",
    "clusterstream_flush_duration_seconds": "histogram",
    "clusterstream_flush_rows": "counter",
    "clusterstream_send_failures": "counter",
    "clusterstream_centres_version": "gauge",
    "clusterstream_centres_age_seconds": "gauge",
    "clusterstream_clusters": "gauge",
    "clusterstream_cluster_members": "gauge",
    "clusterstream_membership_changes": "counter",
    "clusterstream_assignment_distance_mean": "gauge",
    "clusterstream_drift_detections": "counter",
    "clusterstream_job_runs": "counter",
    "clusterstream_job_duration_seconds": "histogram",
    "clusterstream_cf_items": "gauge",
    "clusterstream_coclick_entries": "gauge",
    "clusterstream_user_rows": "gauge",
    "clusterstream_rocksdb_sst_bytes": "gauge",
    "clusterstream_users_expired": "counter",
    "clusterstream_rebalances": "counter",
    "clusterstream_item_vector_coverage": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
}
ID_LABELS = {"user_id", "item_id", "event_id", "user", "item"}


def _http(url: str, method: str = "GET", token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _families(url: str) -> dict:
    status, text = _http(f"{url}/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels) -> float:
    """The sample of ``family`` with ``labels`` (a histogram's: its _count)."""
    for s in family.samples:
        if family.type == "histogram" and not s.name.endswith("_count"):
            continue
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {labels} in {family.name}")


def _dataset(**overrides):
    config = dict(n_users=300, n_clusters=4, n_items=200, dim=DIM, n_events=4000, seed=11)
    config.update(overrides)
    return generate(SynthConfig(**config))


def _start(kafka, workers, settings, data):
    """One worker with the items and the planted centres (v1) loaded."""
    planted = CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
    return start_worker(settings, data, kafka, workers, planted)


def test_metrics_health_and_cheap_stats_with_clicks_flowing(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4, flush_interval_s=0.5)
    data = _dataset(malformed=0.02)
    worker = _start(kafka, workers, settings, data)
    half = data.n_events // 2

    send_clicks(kafka, settings, data, 0, half)
    first = worker.wait_for(caught_up(half), 60, "the first half")
    before = _families(worker.url)
    send_clicks(kafka, settings, data, half)
    worker.wait_for(caught_up(data.n_events), 60, "every click")
    # a flush follows within flush_interval_s
    worker.wait_for(lambda s: s["unflushed_clicks"] == 0, 30, "the last flush")
    after = _families(worker.url)

    for name, kind in EXPECTED.items():
        assert name in after, f"{name} missing from /metrics"
        assert after[name].type == kind, (name, after[name].type)
    for name, family in after.items():
        assert name.startswith(("clusterstream_", "process_", "python_")), name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        for s in family.samples:
            assert not ID_LABELS & set(s.labels), (name, s.labels)
            assert not any(v in data.user_ids or v in data.item_ids for v in s.labels.values())

    # what grew between the two scrapes, while clicks flowed
    events_before = _value(before["clusterstream_events"], result="applied")
    assert _value(after["clusterstream_events"], result="applied") > events_before > 0
    batches_before = _value(before["clusterstream_batch_duration_seconds"])
    assert _value(after["clusterstream_batch_duration_seconds"]) > batches_before >= 1
    assert _value(after["clusterstream_click_to_cf_seconds"]) >= 1
    assert _value(after["clusterstream_flush_duration_seconds"]) >= 1
    assert _value(after["clusterstream_flush_rows"]) > 0

    # the figures agree with /stats
    stats = worker.stats()
    events = after["clusterstream_events"]
    assert (
        sum(_value(events, result=r) for r in ("applied", "unknown_item"))
        == stats["events_applied"]
    )
    assert _value(events, result="rejected") == stats["events_rejected"] > 0
    dlq = after["clusterstream_dlq_records"]
    assert (
        sum(s.value for s in dlq.samples if s.name.endswith("_total")) == stats["events_rejected"]
    )
    assert all(re.fullmatch(r"[a-z0-9_]+", s.labels["reason"]) for s in dlq.samples)
    assert _value(after["clusterstream_centres_version"]) == 1
    assert _value(after["clusterstream_clusters"], state="live") == 4
    lag = after["clusterstream_consumer_lag_records"]
    partitions = {s.labels["partition"] for s in lag.samples if s.labels["topic"] == "clicks"}
    assert partitions == {str(p) for p in range(settings.partitions)}
    assert _value(after["clusterstream_user_rows"], where="memory") == stats["users"]
    assert _value(after["clusterstream_user_rows"], where="rocksdb") > 0
    assert _value(after["clusterstream_rocksdb_sst_bytes"]) >= 0
    assert _value(after["clusterstream_rebalances"]) >= 1
    assert _value(after["clusterstream_item_vector_coverage"], what="items") == 1.0
    assert _value(after["clusterstream_cluster_members"], stat="max") >= _value(
        after["clusterstream_cluster_members"], stat="min"
    )
    assert _value(after["process_resident_memory_bytes"]) > 50e6

    # /stats reads counters only unless the digest is asked for
    assert first["state_digest"] is None
    assert json.loads(_http(f"{worker.url}/stats")[1])["state_digest"] is None
    digest = json.loads(_http(f"{worker.url}/stats?digest=1")[1])["state_digest"]
    assert isinstance(digest, str) and len(digest) >= 16

    status, body = _http(f"{worker.url}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = _http(f"{worker.url}/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] and ready["centres"]["version"] == 1
    assert ready["partitions"] == list(range(settings.partitions))

    # no admin token configured: admin endpoints are disabled, and say how to enable them
    status, body = _http(f"{worker.url}/admin/merge?dry_run=true", "POST", token="anything")
    assert status == 403 and "CLUSTERSTREAM_ADMIN_TOKEN" in json.loads(body)["error"]


def test_readyz_says_bootstrap_is_pending_and_the_log_says_why(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, bootstrap_users=100_000, status_log_interval_s=1.0)
    data = _dataset()
    # no items on the items topic: every click hits an item without a vector
    worker = workers(settings)
    worker.wait_ready()
    status, body = _http(f"{worker.url}/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["centres"]["version"] is None
    assert "100000 users with a vector" in ready["centres"]["bootstrap_pending"]
    send_clicks(kafka, settings, data, 0, 1000)
    worker.wait_for(caught_up(1000), 60, "the clicks")
    deadline = time.monotonic() + 30
    log = ""
    while time.monotonic() < deadline:
        log = worker.log_path.read_text(errors="replace")
        if "bootstrap stalled" in log and "without a vector" in log and "status:" in log:
            break
        time.sleep(0.5)
    time.sleep(2.5)  # more status intervals: the warnings must not repeat
    log = worker.log_path.read_text(errors="replace")
    assert re.search(r"status: \d+ clicks/s, lag \d+, \d+ users, 0 clusters", log), log[-3000:]
    assert log.count("bootstrap stalled") == 1, log[-3000:]
    assert "needs 100000 users with a vector" in log
    assert log.count("clicks hit items without a vector (") == 1, log[-3000:]


def test_admin_token_bounds_forwarding_and_no_secret_leaks(settings_for, kafka, workers):
    from stream.io.broker import free_port

    settings = settings_for(dim=DIM, k=4, admin_token=TOKEN, sasl_password=SASL_PASSWORD)
    data = _dataset(n_events=1000)
    a = _start(kafka, workers, settings, data)
    b = workers(
        settings.model_copy(
            update={"web_port": free_port(), "data_dir": settings.data_dir.with_name("data-b")}
        ),
        "b",
    )
    b.wait_ready()
    send_clicks(kafka, settings, data)
    a.wait_for(lambda s: len(s["workers"]) == 2 and s["leader"] is not None, 60, "two workers")
    both = [a, b]
    stats = {w: w.wait_for(lambda s: s["ready"], 30) for w in both}
    leaders = [w for w in both if stats[w]["leader"]]
    assert len(leaders) == 1
    follower = next(w for w in both if w is not leaders[0])
    bodies = []

    # wrong or missing token: 401, nothing published
    for token in (None, "wrong", TOKEN[:-1]):
        status, body = _http(f"{a.url}/admin/merge?min_size=100000", "POST", token=token)
        assert status == 401 and "Authorization: Bearer" in body, body
        bodies.append(body)
    status, body = _http(f"{a.url}/admin/recompute?k=2", "POST", token="nope")
    assert status == 401
    bodies.append(body)
    time.sleep(1.0)
    assert all(w.stats()["centres_version"] == 1 for w in both)

    # the right token, through the follower: forwarded to the leader with the token
    status, body = _http(f"{follower.url}/admin/merge?dry_run=true", "POST", token=TOKEN)
    assert status == 200, body
    assert json.loads(body)["published_version"] is None and json.loads(body)["dry_run"]

    # bounded query parameters: one-line 400s
    for path in (
        "/users/u1/recommendations?n=1001",
        "/users/u1/recommendations?n=0",
        "/users/u1/recommendations?verbose=1",
        f"/users/{'x' * 300}/recommendations",
        "/clusters/1?n=5000",
        "/clusters/1/top?sort=asc",
        "/stats?digest=1&token=" + TOKEN,
        "/metrics?x=1",
    ):
        status, body = _http(f"{a.url}{path}")
        assert status == 400, (path, status, body)
        error = json.loads(body)["error"]
        assert "\n" not in error and len(error) < 200, error
        bodies.append(body)
    status, body = _http(f"{a.url}/admin/merge?dry_run=true&force=1", "POST", token=TOKEN)
    assert status == 400 and "force" in body
    bodies.append(body)

    # no secret anywhere an operator or a scraper looks
    for w in both:
        for path in ("/stats", "/stats?digest=1", "/metrics", "/healthz", "/readyz"):
            status, body = _http(f"{w.url}{path}")
            assert status == 200, (path, body)
            bodies.append(body)
    for text in [*bodies, *(w.log_path.read_text(errors="replace") for w in both)]:
        assert TOKEN not in text and SASL_PASSWORD not in text
    assert "**********" not in orjson.dumps(a.stats()).decode()
