"""SIGKILL at random moments under load: the state must equal a clean run's exactly.

Two apps on the session broker get the same items, centre set and clicks,
sent at a steady rate while the test runs. The worker of one is killed with
SIGKILL at random moments (during start-up, catch-up or live consumption)
and restarted on the same data dir, and once more before the last clicks,
which the other, never killed, takes two at a time (so the two cut the
stream into very different batches). Once both have
caught up they must agree on every user record (the raw bytes in RocksDB),
every CF entry (cluster, item, score, and the table clocks the scores are
served at), every user's served recommendations and every cluster's top
items; and both state digests must equal an offline replay's.

``CLUSTERSTREAM_TEST_KILL_RUNS`` (default 1) runs that many such runs, each
with ``CLUSTERSTREAM_TEST_KILLS`` kills (default 3) and its own seed.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.request

import pytest

from stream.app.cfstore import CFPartitionStore
from stream.app.stores import UserPartitionStore
from stream.core.clicks import ClickBatch
from stream.core.pipeline import replay
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from tests.integration.helpers import centres_from_items, offline_state

pytestmark = pytest.mark.broker

DIM = 16
RUNS = int(os.environ.get("CLUSTERSTREAM_TEST_KILL_RUNS", "1"))
KILLS = int(os.environ.get("CLUSTERSTREAM_TEST_KILLS", "3"))
TAIL = 60  # clicks sent two at a time at the end


def _send(kafka, apps, data, start: int, stop: int, seconds: float, step: int) -> None:
    """Send clicks ``start:stop`` to every app's clicks topic, in order, ``step``
    at a time, spread over ``seconds``."""
    records = list(data.records(start, stop))
    keys = [r["user_id"].encode() for r in data.click_records(start, stop)]
    chunks = -(-len(records) // step)
    for a in range(0, len(records), step):
        for settings in apps:
            kafka.send(Topics(settings).clicks, records[a : a + step], keys[a : a + step])
        time.sleep(seconds / chunks)


def _producer(kafka, apps, data, stop: int, seconds: float) -> threading.Thread:
    """:func:`_send` of clicks ``0:stop`` in 40 chunks, on a thread."""
    thread = threading.Thread(
        target=_send, args=(kafka, apps, data, 0, stop, seconds, -(-stop // 40)), daemon=True
    )
    thread.start()
    return thread


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _users(settings) -> tuple[dict[str, bytes], list[dict[int, int]]]:
    """Every user record of a stopped worker's stores, as raw bytes, and each
    partition's member counts."""
    out, sizes = {}, []
    dtype = settings.engine_config().user_dtype()
    for p in range(settings.partitions):
        store = UserPartitionStore(settings.data_dir / settings.app_id / f"users-p{p}", dtype)
        for ids, rows in store.iter_chunks():
            out.update(zip(ids, (r.tobytes() for r in rows), strict=True))
        sizes.append(store.sizes)
        store.close()
    return out, sizes


def _cf(settings, partitions: int) -> dict[int, tuple[int | None, dict]]:
    """Per cf-deltas partition of a stopped worker: the snapshot's CF and
    co-click table clocks and entries {(cluster, item key): score at that
    clock} and {(scope, item key, other key): score}."""
    out = {}
    for p in range(partitions):
        store = CFPartitionStore(settings.data_dir / settings.app_id / f"cf-p{p}")
        engine = settings.engine_config()
        table, coclick = engine.cf_table(), engine.coclick_table()
        store.load(table, coclick)
        store.close()
        clusters, keys, scores = table.entries()
        pairs = zip(clusters.tolist(), keys.tolist(), strict=True)
        entries = dict(zip(pairs, scores.tolist(), strict=True))
        scopes, items, others, values, *_ = coclick.entries()
        triples = zip(scopes.tolist(), items.tolist(), others.tolist(), strict=True)
        co = dict(zip(triples, values.tolist(), strict=True))
        out[p] = ((table.clock_ms, coclick.clock_ms), {**entries, **co})
    return out


def _stopped(worker, workers):
    """Stop ``worker`` gracefully. Its stores are read raw afterwards, so they
    must hold the last flush: when the stop did not release the partitions
    (seen once in 20 runs: the hot path's shutdown skipped its release, which
    leaves the last flushes only in RocksDB's memtable, and the worker skips
    the write-ahead log), start it again, which restores them from the
    changelog, and stop it once more."""
    assert worker.stop() == 0
    if "released (stop)" in worker.log_path.read_text(errors="replace"):
        return worker
    print(f"{worker.log_path.name}: the stop did not release its partitions; restarting it")
    again = workers(worker.settings, name=f"{worker.log_path.stem}-again")
    again.wait_ready()
    assert again.stop() == 0
    assert "released (stop)" in again.log_path.read_text(errors="replace")
    return again


def _served(worker, user_ids, cluster_ids) -> tuple[dict, dict]:
    users = {u: _get(f"{worker.url}/users/{u}/recommendations?n=10") for u in user_ids}
    clusters = {c: _get(f"{worker.url}/clusters/{c}") for c in cluster_ids}
    return users, clusters


@pytest.mark.parametrize("run", range(RUNS))
def test_random_sigkills_under_load_leave_exactly_the_clean_state(
    settings_for, kafka, workers, run
):
    seed = int(os.environ.get("CLUSTERSTREAM_TEST_KILL_SEED", time.time_ns() % 1_000_000)) + run
    rng = random.Random(seed)
    print(f"kill run {run}: seed {seed}, {KILLS} kills")
    common = dict(dim=DIM, k=4, batch_size=200, flush_interval_s=0.5, cf_snapshot_interval_s=1.0,
                  worker_coclicks=True)  # fmt: skip
    clean = settings_for(**common)
    killed = settings_for(**common)
    data = generate(
        SynthConfig(n_users=300, n_clusters=4, n_items=200, dim=DIM, n_events=8000, seed=seed)
    )
    centres = centres_from_items(clean, data)
    for settings in (clean, killed):
        kafka.send_json(Topics(settings).items, list(data.item_records()), "item_id")
        kafka.send_centres(settings, centres)
    reference = workers(clean, name="clean")
    victim = workers(killed, name="killed")
    tail = data.n_events - TAIL
    producer = _producer(kafka, (clean, killed), data, tail, seconds=8.0 + 2.0 * KILLS)
    for i in range(KILLS):
        time.sleep(rng.uniform(1.0, 6.0))  # from start-up to live consumption
        victim.kill()
        victim = workers(killed, name=f"killed-{i + 1}")
    producer.join(120)
    assert not producer.is_alive()
    # the last clicks trickle in while the victim is down: the clean worker takes
    # them in batches of a click or two, the restarted one in one catch-up batch
    reference.wait_for(lambda s: s["lag"] == 0, 60, "the clean worker to catch up")
    victim.kill()
    _send(kafka, (clean, killed), data, tail, data.n_events, seconds=3.0, step=2)
    victim = workers(killed, name="killed-last")

    offline = offline_state(clean, data, centres)
    replay(offline, ClickBatch.from_records(data.click_records()), batch_size=500)
    expected = offline.digest()
    for worker in (reference, victim):
        worker.wait_for(
            lambda s, w=worker: (
                s["ready"]
                and s["lag"] == 0
                and s["cf_lag"] == 0
                and w.stats(digest=True)["state_digest"] == expected
            ),
            120,
            f"{worker.log_path.name} to reach the offline replay's state (seed {seed})",
        )

    # what is served: every user's recommendations, every cluster's top items
    user_ids = sorted({r["user_id"] for r in data.click_records()})
    cluster_ids = centres.ids.tolist()
    want_users, want_clusters = _served(reference, user_ids, cluster_ids)
    got_users, got_clusters = _served(victim, user_ids, cluster_ids)
    differ = [u for u in user_ids if got_users[u] != want_users[u]]
    assert not differ, (seed, len(differ), want_users[differ[0]], got_users[differ[0]])
    assert sum(len(r["items"]) for r in want_users.values()) > len(user_ids)  # not all empty
    for c in cluster_ids:
        want, got = want_clusters[c], got_clusters[c]
        assert got["top_items"] == want["top_items"], (seed, c)

    # the stores themselves: every user record and every CF entry
    reference, victim = _stopped(reference, workers), _stopped(victim, workers)
    n_cf = clean.partitions  # the cf-deltas topic has as many
    (want_rows, want_sizes), (got_rows, got_sizes) = _users(clean), _users(killed)
    assert len(want_rows) == len(user_ids) and got_sizes == want_sizes
    assert got_rows.keys() == want_rows.keys()
    assert [u for u in want_rows if got_rows[u] != want_rows[u]] == [], seed
    want_cf, got_cf = _cf(clean, n_cf), _cf(killed, n_cf)
    for p in range(n_cf):
        (want_clock, want), (got_clock, got) = want_cf[p], got_cf[p]
        assert got_clock == want_clock, (seed, p)  # (CF, co-click) tables' clocks
        assert got.keys() == want.keys(), (seed, p)
        # the one tolerance: float order (module doc of stream.core.digest)
        for key, score in want.items():
            assert got[key] == pytest.approx(score, rel=1e-12, abs=1e-12), (seed, p, key)
    print(
        f"kill run {run}: seed {seed}: {KILLS} kills, {len(want_rows)} users, "
        f"{sum(len(e) for _, e in want_cf.values())} CF and co-click entries, {len(user_ids)} users' "
        "recommendations: all equal"
    )
