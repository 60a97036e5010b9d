"""Item vectors learnt from clicks survive a SIGKILL, a restart and a rebalance.

No item has a given vector, so every clicked item learns one. The learner's
sums hold each click once (its weight, split over the clicker's clusters by
share), so over the whole log the worker's ``learnt_from_clicks`` must be
the log's total click weight: a click lost by a restart, or counted twice by
a replay, would show. Each clicks partition keeps its part of the sums with
its users (:mod:`stream.app.learnt`): a restarted worker reinstalls the
vectors before any new click, and a second worker that takes a partition
(from the changelog, its disk being empty) takes that partition's part. Each
worker also holds the part of every partition it does not own, as its owner
published it, so both hold every click's weight once. At the end the stores
hold each item's click weight exactly.
"""

from __future__ import annotations

import threading
import time

import pytest

from stream.app.stores import UserPartitionStore
from stream.core.centres import CentreSet
from stream.io.synth import SynthConfig, generate
from tests.integration.helpers import send_clicks
from tests.integration.test_jobs import _second
from tests.integration.test_kills import _stopped

pytestmark = pytest.mark.broker


def _learnt(stats: dict) -> float:
    return stats["item_vectors"]["learnt_from_clicks"]


def test_learnt_item_sums_survive_a_kill_a_restart_and_a_rebalance(settings_for, kafka, workers):
    settings = settings_for(
        dim=16, k=4, batch_size=200, flush_interval_s=0.5, min_score=-1.0,
        item_learn_min_clicks=3, item_learn_every_s=1.0, min_cluster_size=0,
    )  # fmt: skip
    data = generate(SynthConfig(n_users=200, n_clusters=4, n_items=150, dim=16, n_events=4000,
                                seed=3))  # fmt: skip
    late = 3600  # clicks from here on are sent after the second worker joined
    total = float(data.click_weight[:late].sum())
    kafka.send_centres(settings, CentreSet.create(data.centres, created_at_ms=0))
    a = workers(settings, name="a")
    a.wait_for(lambda s: s["ready"] and s["centres_version"] is not None, 60, "a ready")
    chunks = [(s, s + 100) for s in range(0, late, 100)]

    def produce():
        for start, stop in chunks:
            send_clicks(kafka, settings, data, start, stop)
            time.sleep(0.15)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(2.5)
    a.kill()  # mid-stream, with unflushed clicks
    a = workers(settings, name="a-killed")
    producer.join(60)
    stats = a.wait_for(
        lambda s: s["ready"] and s["lag"] == 0 and _learnt(s) == pytest.approx(total, rel=1e-9),
        60, f"a to hold every click's weight ({total:.2f}) after the kill",
    )  # fmt: skip
    learnt = stats["item_vectors"]["learnt"]
    assert learnt > 50, stats["item_vectors"]

    assert a.stop() == 0
    a = workers(settings, name="a-again")
    stats = a.wait_for(lambda s: s["ready"], 60, "a ready again")
    # no click since the restart: the vectors come from the stores
    assert stats["events_applied"] == 0 and _learnt(stats) == pytest.approx(total, rel=1e-9)
    assert stats["item_vectors"]["learnt"] >= learnt

    b = workers(_second(settings), name="b")  # an empty disk: b reads the changelog
    b.wait_for(lambda s: s["ready"] and len(s["partitions"]) == 1, 60, "b to own one")
    # each worker holds its own partition's part from its store and the other's
    # as published: both hold every click's weight once. a lists a revoked
    # partition as gone before it is handed over: ask both until they settle
    deadline, held, both = time.monotonic() + 30, [], []
    while time.monotonic() < deadline:
        both = [a.stats(), b.stats()]
        held = [_learnt(s) for s in both]
        if all(len(s["partitions"]) == 1 for s in both) and all(
            h == pytest.approx(total, rel=1e-9) for h in held
        ):
            break
        time.sleep(0.2)
    assert all(h == pytest.approx(total, rel=1e-9) for h in held), (held, total)
    for mine, theirs in (both, both[::-1]):
        assert mine["item_vectors"]["partitions_own"] == mine["partitions"]
        assert mine["item_vectors"]["partitions_published"] == theirs["partitions"]
    # clicks now: each worker learns its partition's and the other's, as published
    send_clicks(kafka, settings, data, late, data.n_events)
    total = float(data.click_weight.sum())
    for worker in (a, b):
        worker.wait_for(
            lambda s: s["lag"] == 0 and _learnt(s) == pytest.approx(total, rel=1e-9),
            60, f"both workers to hold the later clicks' weight too ({total:.2f})",
        )  # fmt: skip
    assert b.stop() == 0
    a.wait_for(
        lambda s: s["partitions"] == [0, 1] and _learnt(s) == pytest.approx(total, rel=1e-9),
        60, "a to hold both partitions' sums again",
    )  # fmt: skip
    print(f"\nlearnt from {total:.2f} clicks; {learnt} vectors; held after the join {held}")
    _stopped(a, workers)
    # per item, the stores hold each click's weight once
    want: dict[str, float] = {}
    for rec in data.click_records():
        want[rec["item_id"]] = want.get(rec["item_id"], 0.0) + rec.get("weight", 1.0)
    got: dict[str, float] = {}
    dtype = settings.engine_config().user_dtype()
    for p in range(settings.partitions):
        store = UserPartitionStore(settings.data_dir / settings.app_id / f"users-p{p}", dtype)
        for item, values in zip(*store.learnt_rows(), strict=True):
            got[item] = got.get(item, 0.0) + values[0]
        store.close()
    assert got.keys() == want.keys()
    assert all(got[i] == pytest.approx(want[i], rel=1e-9) for i in want), [
        (i, got[i], want[i]) for i in want if got[i] != pytest.approx(want[i], rel=1e-9)
    ][:5]
