"""Behaviour fingerprint of the code on PYTHONPATH, to compare two commits
around a redesign: one worker on a fresh embedded broker, a synthetic log
(1% malformed records), fixed centres. Prints JSON with the state digest,
hashes of the served recommendations of 60 users and of every cluster's CF
top, and the assignments / DLQ counts, after (a) the whole log, (b) a stop
and restart (restore), (c) a second app whose worker is SIGKILLed twice
mid-stream and restarted. (a), (b), (c) and two commits that behave alike
print the same digest and hashes; the assignment records are not compared
across runs: which changes get a record depends on where batches cut.

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python tests/bench/fingerprint.py /tmp/old.json
    PYTHONPATH=$PWD python tests/bench/fingerprint.py /tmp/new.json
"""

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer

try:
    from stream.io.topics import Topics
    from stream.wire.centres import CENTRES_KEY, encode_centres
except ImportError:  # a commit before stream/wire
    from stream.app.topics import CENTRES_KEY, Topics

    def encode_centres(centres):
        return centres.to_bytes()


from stream.app.process import WorkerProcess
from stream.core.pipeline import EngineState
from stream.core.recompute import recompute
from stream.io.broker import EmbeddedBroker, free_port
from stream.io.kafka import ensure_topics
from stream.io.synth import SynthConfig, generate
from stream.settings import Settings

DIM = 16


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def h(obj):
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def read_all(bootstrap, topic):
    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
        fetch_max_wait_ms=100,
    )
    try:
        return [(m.partition, m.offset, m.key or b"", m.value or b"") for m in c]
    finally:
        c.close()


def main(out):
    data = generate(
        SynthConfig(
            n_users=400, n_clusters=4, n_items=200, dim=DIM, n_events=6000, seed=7, malformed=0.01
        )
    )
    tmp = Path(tempfile.mkdtemp())
    result = {}
    with EmbeddedBroker(silent=True) as broker:
        prod = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)

        def app(name):
            s = Settings(
                bootstrap_servers=broker.bootstrap,
                embedded_broker=True,
                app_id=name,
                data_dir=tmp / name,
                partitions=2,
                session_timeout_ms=2000,
                heartbeat_interval_ms=500,
                web_port=free_port(),
                batch_size=512,
                batch_wait_ms=20,
                recompute_cron="off",
                dim=DIM,
                k=4,
            )
            t = Topics(s)
            ensure_topics(s, t.specs())
            state = EngineState.in_memory(s.engine_config())
            for rec in data.item_records():
                state.items.upsert_record(rec)
            centres, _ = recompute(
                state.items.vectors, None, k=4, seed=0, reason="bootstrap", created_at_ms=1
            )
            for rec in data.item_records():
                prod.send(t.items, orjson.dumps(rec), key=rec["item_id"].encode())
            prod.send(t.centres, encode_centres(centres), key=CENTRES_KEY, partition=0)
            prod.flush()
            return s, t, centres

        def send(t, a, b):
            vals = list(data.records(a, b))
            keys = [r["user_id"].encode() for r in data.click_records(a, b)]
            for k, v in zip(keys, vals, strict=True):
                prod.send(t.clicks, v, key=k)
            prod.flush()

        def wait(w, n):
            return w.wait_for(
                lambda s: (
                    s["ready"]
                    and s["events_applied"] + s["events_rejected"] >= n
                    and s["lag"] == 0
                    and s["cf_lag"] == 0
                    and s["unflushed_clicks"] == 0
                ),
                240,
                "caught up",
            )

        def wait_ready_state(w):
            return w.wait_for(
                lambda s: s["ready"] and s["lag"] == 0 and s["cf_lag"] == 0, 240, "ready"
            )

        def fingerprint(w, s, t, centres):
            users = sorted({r["user_id"] for r in data.click_records()})[:60]
            recs = {u: get(f"{w.url}/users/{u}/recommendations?n=10") for u in users}
            tops = {str(c): get(f"{w.url}/clusters/{c}/top?n=20") for c in centres.ids.tolist()}
            return {
                "digest": w.stats(digest=True)["state_digest"],
                "recommendations": h(recs),
                "cf_tops": h(tops),
                "sample": recs[users[0]],
            }

        s, t, centres = app("clean")
        w = WorkerProcess(s, tmp / "clean.log").start()
        wait_ready_state(w)
        send(t, 0, None)
        st = wait(w, data.n_events)
        result["clean"] = fingerprint(w, s, t, centres)
        result["clean"]["applied"] = st["events_applied"]
        result["clean"]["rejected"] = st["events_rejected"]
        result["clean"]["assignments"] = len(read_all(broker.bootstrap, t.assignments))
        result["clean"]["dlq_count"] = len(read_all(broker.bootstrap, t.clicks_dlq))
        w.stop()
        w = WorkerProcess(s, tmp / "clean2.log").start()
        wait_ready_state(w)
        result["restarted"] = fingerprint(w, s, t, centres)
        w.stop()

        s, t, centres = app("killed")
        w = WorkerProcess(s, tmp / "k0.log").start()
        wait_ready_state(w)
        n = data.n_events
        for i, (a, b) in enumerate([(0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n)]):
            send(t, a, b)
            if i < 2:
                time.sleep(0.4 + 0.3 * i)
                os.kill(w.pid, signal.SIGKILL)
                time.sleep(0.5)
                w = WorkerProcess(s, tmp / f"k{i + 1}.log").start()
                wait_ready_state(w)
        deadline = time.time() + 180
        want = result["clean"]["digest"]
        while time.time() < deadline:
            try:
                if w.stats(digest=True)["state_digest"] == want:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        result["killed"] = fingerprint(w, s, t, centres)
        w.stop()
        prod.close()
    Path(out).write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "sample"} for k, v in result.items()},
            indent=1,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
