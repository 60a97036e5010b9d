"""Jobs and serving on real workers: merge, recompute, drift, crontab, recommendations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import orjson
import pytest

from stream.app.process import settings_env
from stream.core.centres import CentreSet
from stream.core.items import item_key
from stream.core.recall import POPULAR_DEPTH
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from stream.wire.centres import decode_centres
from stream.wire.partition import user_partition
from tests.integration.helpers import caught_up, offline_state, send_clicks

pytestmark = pytest.mark.broker

DIM = 16


def _cli(settings, *args, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    env.update(settings_env(settings))
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


ADMIN_TOKEN = "test-admin-token"


def _http(url, method="GET", token=None):
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _load(kafka, settings, data, centres=None):
    topics = Topics(settings)
    kafka.send_json(topics.items, list(data.item_records()), "item_id")
    if centres is not None:
        kafka.send_centres(settings, centres)


def _second(settings):
    """Settings of a second worker of the same app: own web port and disk."""
    from stream.io.broker import free_port

    return settings.model_copy(
        update={"web_port": free_port(), "data_dir": settings.data_dir.with_name("data-b")}
    )


def _in_changelog(n):
    """Caught up, and every click flushed: an offline recompute reads the changelog."""
    read = caught_up(n)
    return lambda s: read(s) and s["unflushed_clicks"] == 0


def test_merge_retires_an_undersized_cluster_and_moves_its_members(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, min_cluster_size=20, admin_token=ADMIN_TOKEN)
    # planted cluster 0 loses 95% of its users before any click
    data = generate(
        SynthConfig(n_users=400, n_clusters=4, n_items=200, dim=DIM, n_events=4000, seed=5,
                    drift_at=0.0, shrink_cluster=0, shrink_keep=0.05)
    )  # fmt: skip
    v1 = CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
    _load(kafka, settings, data, v1)
    worker = workers(settings)
    worker.wait_ready()
    send_clicks(kafka, settings, data)
    worker.wait_for(caught_up(data.n_events), 60, "all clicks")
    # the registry's sizes come from the workers' periodic reports: wait for one that
    # was made after the last click (a report made earlier counts fewer users)
    stats = worker.wait_for(
        lambda s: s["cluster_sizes"] and sum(s["cluster_sizes"].values()) == s["users"],
        30,
        "sizes of every user in the registry",
    )
    sizes = {int(k): v for k, v in stats["cluster_sizes"].items()}
    total = sum(sizes.values())
    assert 0 < sizes.get(0, 0) < 20 and total == 400

    status, plan = _http(f"{worker.url}/admin/merge?dry_run=true", "POST", ADMIN_TOKEN)
    assert status == 200 and plan["retired"] == [0] and plan["published_version"] is None
    assert worker.stats()["centres_version"] == 1  # a dry run publishes nothing

    report = _cli(settings, "merge", "--json")
    target = report["steps"][0]["target"]
    assert report["retired"] == [0] and report["published_version"] == 2 and target != 0
    stats = worker.wait_for(
        lambda s: s["centres_version"] == 2 and "0" not in s["cluster_sizes"],
        60,
        "the sweep to move the retired cluster's members",
    )
    after = {int(k): v for k, v in stats["cluster_sizes"].items()}
    assert sum(after.values()) == total  # nobody lost
    assert (
        after[target] >= sizes[target] + sizes[0] - 5
    )  # members went to the target (hysteresis aside)

    status, retired = _http(f"{worker.url}/clusters/0")
    assert status == 200 and retired["retired"] and retired["alias"] == target
    # the assignment events of moved users carry the retired id as previous
    moved = [
        orjson.loads(r.value)
        for r in kafka.read_all(Topics(settings).assignments, timeout_s=2)
        if orjson.loads(r.value)["centres_version"] == 2
    ]
    assert moved and all(m["previous"] for m in moved)
    assert any(m["previous"][0]["cluster_id"] == 0 for m in moved)
    assert all(m["memberships"][0]["cluster_id"] != 0 for m in moved)
    assert worker.stop() == 0


#: the recompute report's figures the two recompute tests print (``pytest -s``)
FIGURES = ("k", "matched", "new", "retired", "id_churn", "user_churn", "seconds")


def test_recompute_keeps_ids_on_unchanged_data(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=6)
    data = generate(
        SynthConfig(n_users=600, n_clusters=6, n_items=300, dim=DIM, n_events=6000, seed=7)
    )
    v1 = CentreSet.create(
        data.centres, reason="bootstrap", created_at_ms=1, ids=[10, 11, 12, 13, 14, 15]
    )
    _load(kafka, settings, data, v1)
    worker = workers(settings)
    worker.wait_ready()
    send_clicks(kafka, settings, data)
    worker.wait_for(_in_changelog(data.n_events), 60, "all clicks flushed")

    dry = _cli(settings, "recompute", "--k", "6", "--dry-run", "--json")
    assert dry["published_version"] is None and dry["users_read"] == 600
    report = _cli(settings, "recompute", "--k", "6", "--json")
    print("recompute on unchanged data:", {k: report[k] for k in FIGURES})  # pytest -s
    assert report["matched"] == 6 and report["new"] == 0 and report["retired"] == 0
    assert report["id_churn"] == 0.0 and report["user_churn"] < 0.02
    assert report["published_version"] == 2
    stats = worker.wait_for(lambda s: s["centres_version"] == 2, 30, "version 2")
    assert stats["centres_reason"] == "recompute"
    status, cluster = _http(f"{worker.url}/clusters/12")
    assert cluster["known"] and not cluster["retired"] and cluster["centres_version"] == 2
    assert worker.stop() == 0


def test_recompute_after_drift_gives_a_new_cluster_a_fresh_id(settings_for, kafka, workers):
    # a short half-life (in event time) so vectors follow the users' new tastes
    settings = settings_for(dim=DIM, k=6, half_life_s=2.0)
    data = generate(
        SynthConfig(n_users=600, n_clusters=6, n_items=300, dim=DIM, n_events=12000, seed=9,
                    drift_at=0.5, drift_users=0.3, new_cluster=True)
    )  # fmt: skip
    v1 = CentreSet.create(data.centres[:6], reason="bootstrap", created_at_ms=1)
    _load(kafka, settings, data, v1)
    worker = workers(settings)
    worker.wait_ready()
    send_clicks(kafka, settings, data)
    worker.wait_for(_in_changelog(data.n_events), 90, "all clicks flushed")

    report = _cli(settings, "recompute", "--k", "7", "--json")
    print("recompute after drift:", {k: report[k] for k in FIGURES})  # pytest -s
    assert report["k"] == 7 and report["matched"] == 6 and report["new"] == 1
    assert report["user_churn"] > 0.05  # the movers to the new cluster
    v2 = worker.wait_for(lambda s: s["centres_version"] == 2, 30, "version 2")
    assert v2["clusters"] == 7
    published = [decode_centres(r.value) for r in kafka.read_all(Topics(settings).centres, 2)]
    new = published[-1]
    assert set(range(6)) <= set(new.ids.tolist())  # persisting clusters kept their ids
    fresh = (set(new.ids.tolist()) - set(range(6))).pop()
    assert fresh >= v1.next_id
    # the fresh id sits on the planted new cluster
    row = new.rows_of(np.array([fresh]))[0]
    assert float(new.vectors[row] @ data.centres[6]) > 0.8
    assert worker.stop() == 0


def _settled(s: dict) -> bool:
    """One clicks and one cf-deltas partition each, and the registry says so."""
    claimed = sorted(p for r in s["workers"] for p in r["clicks_partitions"])
    cf = sorted(p for r in s["workers"] for p in r["cf_partitions"])
    return s["ready"] and len(s["partitions"]) == 1 and claimed == cf == [0, 1]


def _two_workers(settings_for, kafka, workers, seed: int, **overrides):
    """Items and a centre set v1 on the topics, then workers "a" and "b" of one app."""
    settings = settings_for(dim=DIM, k=4, worker_coclicks=True, **overrides)
    data = generate(
        SynthConfig(n_users=300, n_clusters=4, n_items=200, dim=DIM, n_events=4000, seed=seed)
    )
    v1 = CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
    _load(kafka, settings, data, v1)
    return settings, data, v1, workers(settings, name="a"), workers(_second(settings), name="b")


def test_recommendations_from_any_worker(settings_for, kafka, workers):
    settings, data, _, a, b = _two_workers(settings_for, kafka, workers, seed=11)

    for w in (a, b):
        w.wait_for(_settled, 60, "one partition each, known to both")
    send_clicks(kafka, settings, data)
    deadline = time.monotonic() + 60
    while sum(w.stats()["events_applied"] for w in (a, b)) < data.n_events:
        assert time.monotonic() < deadline, "the two workers did not apply every click"
        time.sleep(0.2)
    for w in (a, b):
        w.wait_for(lambda s: s["lag"] == 0 and s["cf_lag"] == 0, 30, "the CF deltas")
    b_part = b.stats()["partitions"][0]
    user = next(u for u in data.user_ids if user_partition(u, 2) == b_part)
    status, from_a = _http(f"{a.url}/users/{user}/recommendations?n=5")
    status_b, from_b = _http(f"{b.url}/users/{user}/recommendations?n=5")
    assert status == status_b == 200, (from_a, from_b)
    assert from_a == from_b
    assert from_a["known"] and from_a["memberships"] and len(from_a["items"]) == 5
    # co-clicks weigh most by default; rows of the clusters on the other worker come over HTTP
    assert "coclick" in {i["source"] for i in from_a["items"]}, from_a
    seen = {data.item_ids[i] for i in data.click_item[data.click_user == data.user_ids.index(user)]}
    recent = seen  # with exclude_seen (default) the user's recent clicks are not recommended
    assert not ({i["item_id"] for i in from_a["items"]} & recent) or len(seen) > 16
    _, with_seen = _http(f"{a.url}/users/{user}/recommendations?n=5&exclude_seen=false")
    assert with_seen["items"] and with_seen["memberships"] == from_a["memberships"]
    # a user never seen gets everyone's popular items: the sum of every cluster's
    # table (half of them on the other worker), the same from both workers
    cold = [_http(f"{w.url}/users/never-clicked/recommendations?n=5")[1] for w in (a, b)]
    assert cold[0] == cold[1] and not cold[0]["known"] and not cold[0]["memberships"]
    assert [i["source"] for i in cold[0]["items"]] == ["popular"] * 5, cold[0]
    totals: dict[str, float] = {}
    for cid in [*range(a.stats()["clusters"]), -1]:  # -1: clicks of users without a cluster
        for item in _http(f"{a.url}/clusters/{cid}/top?n={POPULAR_DEPTH}")[1]["items"]:
            totals[item["item_id"]] = totals.get(item["item_id"], 0.0) + item["score"]
    best = sorted(totals, key=lambda i: (-totals[i], i))[:5]
    assert [i["item_id"] for i in cold[0]["items"]] == best
    # a cluster's page is the same from both workers (its table lives on one of them)
    cid = from_a["memberships"][0]["cluster_id"]
    assert (
        _http(f"{a.url}/clusters/{cid}")[1]["top_items"]
        == _http(f"{b.url}/clusters/{cid}")[1]["top_items"]
    )
    a.stop()
    b.stop()


def test_two_workers_cf_tables_equal_the_replay_with_deltas_local_and_remote(
    settings_for, kafka, workers
):
    """Each worker adds its own clicks' deltas to the clusters it owns at once
    and gets the other's through the topic: every cluster's table must still be
    the offline replay's (each click counted once, whichever way it came).
    Undirected co-clicks here (the other tests run the default, directed)."""
    from stream.core.clicks import ClickBatch
    from stream.core.pipeline import replay

    settings, data, v1, a, b = _two_workers(
        settings_for, kafka, workers, seed=12, coclick_directed=False
    )
    for w in (a, b):
        w.wait_for(_settled, 60, "one partition each, known to both")
    send_clicks(kafka, settings, data)
    for w in (a, b):
        w.wait_for(lambda s: s["lag"] == 0 and s["cf_lag"] == 0 and s["events_applied"] > 0,
                   60, "the clicks and CF deltas")  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # every delta sent is applied, skipped as an echo or a duplicate
        stats = [w.stats() for w in (a, b)]
        done = sum(s["cf_deltas_applied"] + s["cf_deltas_echo"] + s["cf_deltas_duplicate"]
                   for s in stats)  # fmt: skip
        if sum(s["events_applied"] for s in stats) == data.n_events and done >= sum(
            s["cf_deltas_sent"] for s in stats
        ):
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    for s in stats:  # both ways were taken on both workers
        assert s["cf_deltas_local"] > 0 and s["cf_deltas_applied"] > 0, s

    offline = offline_state(settings, data, v1)
    offline.coclick = offline.config.coclick_table()
    replay(offline, ClickBatch.from_records(data.click_records()), batch_size=500)
    _coclicks_equal_the_replays(a, offline, [*v1.ids.tolist(), -1], data)
    for cid in v1.ids.tolist():
        keys, scores = offline.cf.top(cid, 10)
        want = dict(zip([offline.items.id_of_key(k) for k in keys.tolist()], scores.tolist(),
                        strict=True))  # fmt: skip
        status, body = _http(f"{a.url}/clusters/{cid}/top?n=10")
        assert status == 200, body
        got = {i["item_id"]: i["score"] for i in body["items"]}
        # the same scores up to one decay factor (each table decays to its newest click)
        got_scores = np.array(sorted(got.values(), reverse=True))
        want_scores = np.array(sorted(want.values(), reverse=True))
        np.testing.assert_allclose(got_scores / got_scores[0], want_scores / want_scores[0],
                                   rtol=1e-3, atol=1e-5)  # fmt: skip
        top = max(want, key=want.get)
        assert got[top] == max(got.values())
    a.stop()
    b.stop()


def _coclicks_equal_the_replays(worker, offline, scopes: list[int], data) -> None:
    """The co-click rows a worker serves (its own or the other worker's, over
    HTTP) equal the offline replay's, up to one decay factor per table."""
    busiest = np.bincount(data.click_item).argsort()[::-1][:5]
    items = [data.item_ids[i] for i in busiest.tolist()]
    query = "&".join(f"item={i}" for i in items)
    compared = 0
    for scope in scopes:
        status, body = _http(f"{worker.url}/clusters/{scope}/coclicks?n=10&{query}")
        assert status == 200, body
        for got in body["rows"]:
            mass, top = offline.coclick.row(scope, item_key(got["item_id"]), 10)
            assert (got["mass"] > 0) == (mass > 0), (scope, got)
            if mass <= 0:
                continue
            want = [offline.items.id_of_key(k) for k, _ in top]
            assert [i for i, _, _ in got["top"]][:3] == want[:3], (scope, got, top)
            assert [k for _, k, _ in got["top"]] == [k for k, _ in top]
            got_scores = np.array([got["mass"], *(v for _, _, v in got["top"])])
            want_scores = np.array([mass, *(v for _, v in top)])
            np.testing.assert_allclose(got_scores / got_scores[0], want_scores / want_scores[0],
                                       rtol=1e-6)  # fmt: skip
            compared += 1
    assert compared >= len(items)  # the global rows at least


def test_crontab_recompute_runs_on_the_leader_only(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4, recompute_cron="* * * * * */4")
    data = generate(
        SynthConfig(n_users=200, n_clusters=4, n_items=100, dim=DIM, n_events=1500, seed=13)
    )
    _load(
        kafka, settings, data, CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
    )
    a = workers(settings, name="a")
    b = workers(_second(settings), name="b")
    send_clicks(kafka, settings, data)
    for w in (a, b):
        w.wait_for(lambda s: s["ready"] and s["lag"] == 0 and s["users"] > 0, 60, "clicks")
    a.wait_for(lambda s: s["centres_version"] >= 3, 60, "two scheduled recomputes")
    runs = {w: w.stats()["jobs"]["runs"]["recompute"] for w in (a, b)}
    leaders = {w: w.stats()["leader"] for w in (a, b)}
    assert sum(leaders.values()) == 1
    leader = next(w for w in (a, b) if leaders[w])
    other = next(w for w in (a, b) if not leaders[w])
    assert runs[leader] >= 2 and runs[other] == 0
    a.stop()
    b.stop()


def test_recompute_sees_clicks_applied_since_the_last_flush(settings_for, kafka, workers):
    # no periodic flush: the users reach the changelog only because the job flushes
    settings = settings_for(
        dim=DIM, k=4, flush_interval_s=3600, flush_max_clicks=10**6, admin_token=ADMIN_TOKEN
    )
    data = generate(
        SynthConfig(n_users=200, n_clusters=4, n_items=100, dim=DIM, n_events=2000, seed=23)
    )
    _load(
        kafka, settings, data, CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
    )
    worker = workers(settings)
    worker.wait_ready()
    send_clicks(kafka, settings, data)
    worker.wait_for(lambda s: s["events_applied"] >= data.n_events, 60, "all clicks")
    stats = worker.stats()
    assert stats["flushes"] == 0 and stats["unflushed_clicks"] == data.n_events
    status, report = _http(f"{worker.url}/admin/recompute?k=4&dry_run=true", "POST", ADMIN_TOKEN)
    assert status == 200, report
    assert report["users_read"] == 200 and report["published_version"] is None
    assert worker.stats()["unflushed_clicks"] == 0  # the job flushed every partition
    assert worker.stop() == 0


def test_drift_triggers_one_recompute(settings_for, kafka, workers):
    # small batches: ADWIN sees one mean per batch and needs a few dozen on each side
    settings = settings_for(
        dim=DIM, k=4, half_life_s=2.0, recompute_on_drift=True, min_recompute_interval_s=3600,
        batch_size=64,
    )  # fmt: skip
    data = generate(
        SynthConfig(n_users=400, n_clusters=4, n_items=200, dim=DIM, n_events=16000, seed=17,
                    drift_at=0.5, drift_users=0.9, new_cluster=True)
    )  # fmt: skip
    _load(
        kafka,
        settings,
        data,
        CentreSet.create(data.centres[:4], reason="bootstrap", created_at_ms=1),
    )
    worker = workers(settings)
    worker.wait_ready()
    send_clicks(kafka, settings, data)
    stats = worker.wait_for(
        lambda s: s["drift"]["detections"] >= 1 and s["jobs"]["runs"]["recompute"] >= 1,
        90,
        "a drift and its recompute",
    )
    worker.wait_for(caught_up(data.n_events), 60, "all clicks")
    stats = worker.stats()
    assert stats["jobs"]["runs"]["recompute"] == 1  # rate-limited to one per hour
    assert stats["jobs"]["last"]["recompute"]["why"] == "drift"
    assert stats["centres_version"] == 2 and stats["centres_reason"] == "recompute"
    assert worker.stop() == 0


def test_subscribe_prints_output_records(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4)
    data = generate(
        SynthConfig(n_users=100, n_clusters=4, n_items=100, dim=DIM, n_events=500, seed=19)
    )
    _load(
        kafka, settings, data, CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
    )
    worker = workers(settings)
    worker.wait_ready()
    send_clicks(kafka, settings, data)
    worker.wait_for(caught_up(data.n_events), 60, "the clicks")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    env.update(settings_env(settings))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "subscribe", "assignments", "--json", "--from-beginning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.kill()
        proc.wait()
    records = [json.loads(line) for line in lines]
    assert all(r["topic"] == Topics(settings).assignments for r in records)
    assert all(r["key"] == r["value"]["user_id"] and r["value"]["memberships"] for r in records)
    worker.stop()
