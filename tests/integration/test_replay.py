"""`clusterstream replay` against the embedded broker: what lands on the topics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import orjson
import pytest

from stream.app.process import settings_env
from stream.io.loaders import load
from stream.io.synth import SynthConfig, generate, write_dataset
from stream.io.topics import Topics
from stream.wire.partition import user_partition

pytestmark = pytest.mark.broker


def run_replay(settings, *args, timeout=180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    if settings is not None:
        env.update(settings_env(settings))
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "replay", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def one_error_line(stderr: str) -> str:
    # skipped input lines are logged as warnings before the one error line
    lines = [line for line in stderr.splitlines() if line.strip() and " WARNING " not in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clusterstream: error: ") and "Traceback" not in stderr
    return lines[0]


def read_sorted(kafka, topic: str) -> list:
    return sorted(kafka.read_all(topic), key=lambda m: (m.partition, m.offset))


def click_tuple(rec: dict) -> tuple:
    return rec["event_id"], rec["user_id"], rec["item_id"], rec["ts"], rec.get("weight", 1.0)


@pytest.fixture
def synth_log(tmp_path):
    data = generate(
        SynthConfig(n_users=60, n_items=40, n_clusters=4, n_events=800, dim=8, seed=5,
                    out_of_order=0.2, malformed=0.02)
    )  # fmt: skip
    return write_dataset(tmp_path / "log", data)


def test_replay_jsonl_keys_partitions_and_orders_clicks(settings_for, kafka, synth_log):
    settings = settings_for(partitions=3)
    topics = Topics(settings)
    clicks, items = synth_log["clicks"], synth_log["items_meta"]
    expected = load(clicks, "jsonl", items)

    result = run_replay(settings, str(clicks), "--format", "jsonl", "--items", str(items))
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(
        f"sent {len(expected.clicks)} clicks to {topics.clicks} "
        f"and {len(expected.items)} items to {topics.items}"
    ), summary
    assert f"invalid JSON {expected.skipped['invalid JSON']}" in summary

    msgs = read_sorted(kafka, topics.clicks)
    assert len(msgs) == len(expected.clicks)
    per_partition: dict[int, list[tuple]] = defaultdict(list)
    for m in msgs:
        rec = orjson.loads(m.value)
        assert m.key == rec["user_id"].encode()
        assert m.partition == user_partition(rec["user_id"], 3)
        per_partition[m.partition].append(click_tuple(rec))
    c = expected.clicks
    want: dict[int, list[tuple]] = defaultdict(list)
    for i, user_id in enumerate(c.user_ids):
        want[user_partition(user_id, 3)].append(
            (c.event_ids[i], user_id, c.item_ids[i], int(c.ts[i]), float(c.weights[i]))
        )
    assert dict(per_partition) == dict(want)  # every click, keeping the log's (time) order
    for rows in per_partition.values():
        ts = [row[3] for row in rows]
        assert ts == sorted(ts)

    item_msgs = read_sorted(kafka, topics.items)
    sent_items = {m.key.decode(): orjson.loads(m.value) for m in item_msgs}
    assert len(item_msgs) == len(expected.items)
    assert sent_items == {r["item_id"]: r for r in expected.items}


def test_replay_now_limit_rate(settings_for, kafka, synth_log):
    settings = settings_for(partitions=2)
    topics = Topics(settings)
    expected = load(synth_log["clicks"], "jsonl")
    before = int(time.time() * 1000)
    result = run_replay(
        settings, str(synth_log["clicks"]), "--format", "jsonl",
        "--now", "--limit", "100", "--rate", "400", "--no-progress",
    )  # fmt: skip
    after = int(time.time() * 1000)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"sent 100 clicks to {topics.clicks} and 0 items"), summary
    rate = float(re.search(r"\((\d+) clicks/s\)", summary).group(1))
    assert rate <= 400 * 100 / 99 + 1

    sent = {}
    for m in kafka.read_all(topics.clicks):
        rec = orjson.loads(m.value)
        sent[rec["event_id"]] = rec["ts"]
    first = dict(
        zip(expected.clicks.event_ids[:100], expected.clicks.ts[:100].tolist(), strict=False)
    )
    assert set(sent) == set(first)
    shifts = {sent[e] - first[e] for e in first}
    assert len(shifts) == 1  # one shift for the whole log
    assert before <= max(sent.values()) <= after


def test_replay_movielens_directory(settings_for, kafka, tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t5\t891717742\n")
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
    (folder / "u.item").write_bytes(f"242|Kolya (1996)|||url|{flags}\n".encode("latin-1"))
    settings = settings_for(partitions=2)
    result = run_replay(settings, str(folder), "--format", "movielens", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "sent 2 clicks" in result.stdout and "and 1 items" in result.stdout
    topics = Topics(settings)
    values = [orjson.loads(m.value) for m in read_sorted(kafka, topics.clicks)]
    # weight 5/5 = 1.0 is the schema's default and left out of the record
    assert sorted((v["user_id"], v.get("weight")) for v in values) == [("186", None), ("196", 0.6)]
    [item] = kafka.read_all(topics.items)
    assert orjson.loads(item.value)["category"] == "Comedy"


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    result = run_replay(None, str(bad), "--format", "jsonl")
    assert result.returncode == 1
    assert "bad.jsonl: 2 of 2 lines are bad (line 1: invalid JSON)" in one_error_line(result.stderr)
    result = run_replay(None, str(tmp_path / "missing.tsv"), "--format", "mind")
    assert result.returncode == 1
    assert "missing.tsv: cannot read" in one_error_line(result.stderr)
    for args in (["--format", "csv"], ["--format", "jsonl", "--now", "--keep-time"]):
        result = run_replay(None, str(bad), *args)
        assert result.returncode == 2
        one_error_line(result.stderr)


def test_replay_infers_the_format_and_prints_no_client_log_lines(settings_for, kafka, synth_log):
    """No --format: the name says jsonl; kafka-python's own warnings stay out of the output."""
    settings = settings_for(partitions=2)
    result = run_replay(settings, str(synth_log["clicks"]), "--items", str(synth_log["items"]))
    assert result.returncode == 0, result.stderr
    assert "format jsonl (told by the name; --format overrides)" in result.stderr
    assert "sent 784 clicks" in result.stdout, result.stdout
    noise = [line for line in result.stderr.splitlines() if " kafka" in line or "aiokafka" in line]
    assert noise == [], result.stderr
    assert len(kafka.read_all(Topics(settings).clicks)) == 784


def test_a_log_without_item_vectors_gets_recommendations_through_replay(
    settings_for, kafka, workers, tmp_path
):
    # no items topic, no metadata: the items' seeds give users vectors, the late
    # bootstrap makes centres, items learn vectors from their clickers
    settings = settings_for(dim=16, k=4, bootstrap_after_s=5.0, item_learn_every_s=1.0)
    data = generate(
        SynthConfig(n_users=200, n_items=150, n_clusters=4, n_events=3000, dim=16, seed=8,
                    rate_per_s=50.0)
    )  # fmt: skip
    paths = write_dataset(tmp_path / "log", data)
    started = time.monotonic()
    worker = workers(settings)
    worker.wait_for(lambda s: s["ready"], 60, "the worker to be ready")
    # at a live rate: the bootstrap comes a few seconds in, the rest learns after it
    result = run_replay(
        settings, str(paths["clicks"]), "--format", "jsonl", "--rate", "200", "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    stats = worker.wait_for(
        lambda s: s["centres_version"] is not None and s["lag"] == 0
        and s["events_applied"] >= data.n_events and s["cf_lag"] == 0,
        60, "the bootstrap and every click",
    )  # fmt: skip
    assert stats["items_with_vector"] == stats["items"] > 100  # seeds or learnt
    learnt = stats["item_vectors"]
    assert learnt["given"] == 0 and learnt["learnt"] > 0, learnt
    served = 0
    for user in data.user_ids[:40]:
        with urllib.request.urlopen(f"{worker.url}/users/{user}/recommendations?n=5") as resp:
            items = orjson.loads(resp.read())["items"]
            # served from the user's clusters, not only the popular fill every user gets
            served += any(i["source"] != "popular" for i in items)
    elapsed = time.monotonic() - started
    print(f"\nno item vectors: {served}/40 users served, {learnt}, {elapsed:.0f} s from start")
    assert served >= 30 and elapsed < 60
    assert worker.stop() == 0
