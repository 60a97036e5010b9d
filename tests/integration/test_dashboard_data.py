"""/dashboard/data of a two-worker app: either worker shows both, merged."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import orjson
import pytest

from stream.core.centres import CentreSet
from stream.io.broker import free_port
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics

pytestmark = pytest.mark.broker

DIM = 16


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait(what: str, check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_either_worker_merges_both_workers_series(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4, registry_interval_s=1.0)
    data = generate(
        SynthConfig(n_users=300, n_clusters=4, n_items=200, dim=DIM, n_events=6000, seed=21)
    )
    topics = Topics(settings)
    kafka.send_json(topics.items, list(data.item_records()), "item_id")
    kafka.send_centres(settings, CentreSet.create(data.centres, reason="bootstrap"))
    a = workers(settings, name="a")
    b = workers(
        settings.model_copy(
            update={"web_port": free_port(), "data_dir": settings.data_dir.with_name("data-b")}
        ),
        name="b",
    )

    for w in (a, b):
        w.wait_for(lambda s: s["ready"] and len(s["partitions"]) == 1, 90, "a partition each")
    records = list(data.click_records())
    kafka.send(
        topics.clicks, [orjson.dumps(r) for r in records], [r["user_id"].encode() for r in records]
    )
    _wait(
        "every click",
        lambda: a.stats()["events_applied"] + b.stats()["events_applied"] == len(records),
    )
    ids = {a.stats()["worker_id"]: a, b.stats()["worker_id"]: b}
    done = time.time()

    def sampled_since_done():
        return all(_get(f"{w.url}/dashboard/series")[1]["samples"][-1]["t"] > done for w in (a, b))

    _wait("a sample of each worker after the last click", sampled_since_done)

    def merged():
        status, body = _get(f"{a.url}/dashboard/data")
        assert status == 200, body
        rows = {w["worker_id"]: w for w in body["workers"]}
        ok = set(rows) == set(ids) and all(w["answered"] for w in rows.values())
        members = sum(c["members"] for c in body["top"])
        return body if ok and len(body["top"]) == 4 and members == len(data.user_ids) else None

    body = _wait("both workers in /dashboard/data", merged)
    rows = {w["worker_id"]: w for w in body["workers"]}
    for wid, proc in ids.items():
        assert rows[wid]["partitions"] == proc.stats()["partitions"]
        assert rows[wid]["ready"] is True
    # each worker's samples account for every click it applied, and the merged
    # series carries them all
    own = [_get(f"{w.url}/dashboard/series")[1] for w in (a, b)]
    assert {s["worker_id"] for s in own} == set(ids)
    for s in own:
        counted = sum(x["applied_per_s"] * x["dt"] for x in s["samples"])
        assert counted == pytest.approx(s["events_applied"], rel=0.01, abs=2), s
    rates = sum(x["applied_per_s"] for s in own for x in s["samples"])
    merged_rates = sum(x.get("applied_per_s", 0) for x in body["series"])
    assert rates > 0 and merged_rates == pytest.approx(rates, rel=0.35), (own, body["series"])
    # every cluster's top items, whichever worker owns its CF table
    assert all(c["items"] and "error" not in c for c in body["top"]), body["top"]
    assert body["centres"]["version"] == 1 and sum(b["clusters"] for b in body["sizes"]) == 4
    # the same picture from the other worker
    status, from_b = _get(f"{b.url}/dashboard/data")
    assert status == 200 and {w["worker_id"] for w in from_b["workers"]} == set(ids)
    assert from_b["top"][0]["cluster_id"] == body["top"][0]["cluster_id"]
    # the routes take no parameters
    status, error = _get(f"{a.url}/dashboard/data?n=5")
    assert status == 400 and "n" in error["error"]
    assert _get(f"{a.url}/dashboard/static/secrets.txt")[0] == 404
    with urllib.request.urlopen(f"{a.url}/dashboard/static/dashboard.js", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("application/javascript")
        assert b"/dashboard/data" in resp.read()
    with urllib.request.urlopen(f"{b.url}/dashboard", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert b'data-chart="throughput"' in resp.read()
    assert a.stop() == 0 and b.stop() == 0
