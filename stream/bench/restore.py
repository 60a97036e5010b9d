"""What a rebalance costs: a fresh worker rebuilding its users from the changelog.

``python -m stream.bench.restore --users 1000000`` starts the embedded broker,
lets worker A apply one click of each of N users (then stop cleanly: its last
flush puts every user on the users changelog), then starts worker B of the same
app on an empty data dir. B owns every clicks partition and must rebuild each
store from the changelog before it is ready. The figure is B's start-to-ready
time minus that of worker C, started last on a new app with empty topics
(process start, compiled kernels from the cache, group join), i.e. the restore
itself, and that per million users. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from stream.app.process import WorkerProcess
from stream.bench.e2e import (
    _publish_items_and_centres,
    _worker_settings,
    click_records,
    cover_all_users,
    produce,
    user_partitions,
)
from stream.core.centres import CentreSet
from stream.io.broker import EmbeddedBroker
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics


def _start_to_ready(worker: WorkerProcess, timeout: float) -> tuple[float, dict]:
    started = time.time()
    stats = worker.wait_for(lambda s: s["ready"], timeout, "the worker to be ready")
    return stats["ready_at"] - started, stats


def run(users: int, partitions: int, dim: int, k: int, workdir: Path) -> dict:
    data = cover_all_users(
        generate(SynthConfig(n_users=users, n_clusters=k, n_items=5000, dim=dim, n_events=users))
    )
    args = dict(partitions=partitions, dim=dim, k=k, seed=0, cf_apply_local=True, batch_size=None)
    with EmbeddedBroker() as broker:
        settings = _worker_settings(broker.bootstrap, workdir, "a", args, recompute_cron="off")
        centres = CentreSet.create(data.centres, reason="bootstrap", created_at_ms=1)
        _publish_items_and_centres(settings, data, centres)
        parts = user_partitions(data.user_ids, partitions)
        produce(broker.bootstrap, Topics(settings).clicks, click_records(data, parts))

        a = WorkerProcess(settings, workdir / "a.log").start()
        try:
            a.wait_ready(600)
            a.wait_for(
                lambda s: s["events_applied"] >= users and s["lag"] == 0, 1800, "every click"
            )
            assert a.stop(600) == 0, a.log_tail()
        finally:
            a.kill()

        fresh = settings.model_copy(update={"data_dir": workdir / "data-b"})
        b = WorkerProcess(fresh, workdir / "b.log").start()
        try:
            b_ready_s, stats = _start_to_ready(b, 1800)
            assert stats["users"] == users, stats["users"]
            b.stop(600)
        finally:
            b.kill()
        empty = _worker_settings(broker.bootstrap, workdir, "c", args, recompute_cron="off")
        c = WorkerProcess(empty, workdir / "c.log").start()
        try:
            c_ready_s, _ = _start_to_ready(c, 600)
            c.stop(600)
        finally:
            c.kill()
    restore_s = b_ready_s - c_ready_s
    return {
        "users": users,
        "partitions": partitions,
        "dim": dim,
        "start_to_ready_empty_s": round(c_ready_s, 2),
        "start_to_ready_restoring_s": round(b_ready_s, 2),
        "restore_s": round(restore_s, 2),
        "restore_s_per_million_users": round(restore_s * 1e6 / users, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=64)
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp:
        result = run(opts.users, opts.partitions, opts.dim, opts.k, Path(tmp))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
