"""Plain helpers shared by the worker tests (fixtures live in conftest.py).

Each test module keeps what only it needs; what two modules need lives here,
once: the offline reference state, centres from the items, starting a worker
with its items loaded, sending a synthetic log's clicks, and the "caught up"
predicate on ``/stats``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from stream.app.process import WorkerProcess
from stream.core.centres import CentreSet
from stream.core.pipeline import EngineState
from stream.core.recompute import recompute
from stream.io.synth import SynthData
from stream.io.topics import Topics
from stream.settings import Settings


def offline_state(settings: Settings, data: SynthData, centres: CentreSet | None) -> EngineState:
    """An in-memory engine with the log's items loaded: the reference a worker must equal."""
    config = settings.engine_config()
    coclick = settings.worker_coclicks and config.coclick_window > 0
    state = EngineState.in_memory(config, centres=centres, coclick=coclick)
    for record in data.item_records():
        state.items.upsert_record(record)
    return state


def centres_from_items(settings: Settings, data: SynthData, k: int = 4) -> CentreSet:
    """Centre set v1 by k-means over the item vectors (seed 0), as a bootstrap would make it."""
    state = offline_state(settings, data, None)
    centres, _ = recompute(
        state.items.vectors, None, k=k, seed=0, reason="bootstrap", created_at_ms=1
    )
    return centres


def start_worker(settings, data, kafka, workers, centres: CentreSet | None) -> WorkerProcess:
    """Publish the items (and ``centres``, if any), start one worker and wait until it is
    ready with every item loaded; a sole worker then owns every clicks partition."""
    kafka.send_json(Topics(settings).items, list(data.item_records()), "item_id")
    if centres is not None:
        kafka.send_centres(settings, centres)
    worker = workers(settings)
    stats = worker.wait_for(
        lambda s: s["ready"] and s["items"] == len(data.item_ids), 60, "items to be loaded"
    )
    assert stats["partitions"] == list(range(settings.partitions))
    assert stats["ready_at"] <= time.time()
    return worker


def send_clicks(kafka, settings: Settings, data: SynthData, start=0, stop=None) -> None:
    """Send clicks ``start:stop`` of the log as produced (malformed ones included), keyed by user."""
    records = list(data.records(start, stop))
    users = [r["user_id"].encode() for r in data.click_records(start, stop)]
    kafka.send(Topics(settings).clicks, records, users)


def send_records(kafka, settings: Settings, records: list[dict]) -> None:
    """Send click records built by the test, keyed by user."""
    kafka.send(
        Topics(settings).clicks,
        [orjson.dumps(r) for r in records],
        [r["user_id"].encode() for r in records],
    )


def caught_up(n: int) -> Callable[[dict], bool]:
    """``/stats`` predicate: ``n`` clicks read (applied or rejected), no lag and
    no CF lag left."""
    return lambda s: (
        s["events_applied"] + s["events_rejected"] >= n and s["lag"] == 0 and s["cf_lag"] == 0
    )
