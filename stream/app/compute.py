"""One batch of clicks in, its outputs out: a plain function over the engine.

:func:`compute_batch` decodes a fetched batch of one clicks partition, runs
:func:`stream.core.pipeline.process_batch` on the partition's store (rows
are staged in its cache, not written) and encodes the dead letters,
assignment changes and CF deltas as records. It sends nothing and writes no
offset: :meth:`stream.app.partition.ClicksPartition.deliver` does, in the
order the delivery guarantee needs. It runs on the event loop, inside the
batch loop (handing it to a thread costs more in GIL hand-overs than it
saves).
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass

from stream.app import learnt
from stream.app.runtime import Record, Runtime
from stream.app.stores import UserPartitionStore
from stream.core.cf import CFDelta
from stream.core.pipeline import EngineState, process_batch
from stream.io.fetched import FetchedRecords
from stream.wire.assignments import assignment_records
from stream.wire.cf_deltas import cf_delta_records
from stream.wire.clicks import decode_clicks
from stream.wire.dlq import dlq_records
from stream.wire.partition import cluster_partition


@dataclass
class BatchResult:
    """What one batch computed, ready to produce."""

    dlq: list[Record]
    assignments: list[Record]
    cf_deltas: list[Record]
    applied: int
    rejected: int
    duplicates: int
    unknown_items: int
    unassigned: int
    mean_distance: float | None
    next_offset: int
    seconds: dict[str, float]
    # for the CF owner's short cut, None in replays: see CFOwner.apply_local
    local_cf: tuple | None = None
    dlq_reasons: tuple[str, ...] = ()  # the reason of each dead letter


class Stages:
    """Adds the time of each step of a batch to ``sink`` (counters for /stats)."""

    def __init__(self, sink: dict[str, float]):
        self.sink = sink
        self.started = self.last = time.perf_counter()
        self.offset = 0.0

    def add(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.sink[name] = self.sink.get(name, 0.0) + value
        self.offset = sum(seconds.values())

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        spent = now - self.last - self.offset
        self.offset = 0.0
        self.sink[name] = self.sink.get(name, 0.0) + spent
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def partition_of_cf(n_partitions: int):
    """cluster id -> its cf-deltas partition, for ``n_partitions`` partitions."""
    return lambda cid: cluster_partition(cid, n_partitions)


def compute_batch(
    runtime: Runtime,
    partition: int,
    store: UserPartitionStore,
    replay_until: int,
    msgs: FetchedRecords,
    n_cf_partitions: int,
) -> BatchResult:
    """Decode, process and encode one batch of clicks partition ``partition``
    (``msgs``: offsets ascending, none applied yet). Clicks below
    ``replay_until`` get one CF delta per click and no local short cut (see
    :mod:`stream.app.partition`)."""
    topics = runtime.topics
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    batch, rejects = decode_clicks(msgs)
    t1 = time.perf_counter()
    dlq = dlq_records(
        [(msgs[i].key, msgs[i].value, msgs[i].offset, reason) for i, reason in rejects],
        topics.clicks, partition, now,
    )  # fmt: skip
    offsets = None  # of the accepted clicks; built only when needed (see _cf_records)
    if rejects:
        rejected = {i for i, _ in rejects}
        offsets = [o for i, o in enumerate(msgs.offsets.tolist()) if i not in rejected]
    centres = runtime.centres
    state = EngineState(
        config=runtime.engine, users=store, items=runtime.items, centres=centres,
        first_clicks=runtime.first_clicks, learner=runtime.learner,
    )  # fmt: skip
    try:
        out = process_batch(state, batch)
    finally:  # what was learnt stays with the partition, even from a failed batch
        learnt.stage(runtime, store)
    store.stage_sizes(out.changes.before_ids[:, 0], out.changes.ids[:, 0])
    t2 = time.perf_counter()
    version = centres.version if centres is not None else 0
    assignments = assignment_records(out.changes, partition, version, out.changes.ts)
    cf, local_cf = [], None
    if len(batch):
        cf, local_cf = _cf_records(
            runtime, partition, msgs, offsets, batch, out, replay_until, n_cf_partitions
        )
    return BatchResult(
        dlq=dlq,
        assignments=assignments,
        cf_deltas=cf,
        applied=len(batch) - out.duplicates,
        rejected=len(rejects),
        duplicates=out.duplicates,
        unknown_items=out.unknown_items,
        unassigned=out.unassigned,
        mean_distance=out.mean_distance,
        next_offset=int(msgs.offsets[-1]) + 1,
        seconds={"decode": t1 - t0, "process": t2 - t1, "encode": time.perf_counter() - t2},
        local_cf=local_cf,
        dlq_reasons=tuple(reason for _, reason in rejects),
    )


def _cf_records(runtime, partition, msgs, offsets, batch, out, replay_until, n_cf_partitions):
    """The batch's cf-delta records and its local short cut (None in a replay).
    ``offsets``: of the accepted clicks, None when every click was accepted."""
    topics, items = runtime.topics, runtime.items

    def ids_of(keys):
        rows = items.rows_for_keys(keys).tolist()
        if len(rows) < 2:
            return [items.ids[r] for r in rows]
        return list(operator.itemgetter(*rows)(items.ids))

    partition_of = partition_of_cf(n_cf_partitions)
    if offsets is None:  # every click accepted
        first, last = int(msgs.offsets[0]), int(msgs.offsets[-1])
    else:
        first, last = offsets[0], offsets[-1]
    if first < replay_until:  # offsets ascend: some deltas may have been sent
        if offsets is None:
            offsets = msgs.offsets.tolist()
        cf = []
        engine = runtime.engine
        pairs = out.pair_delta_per_click(batch.ts, engine.coclick_half_life_ms)
        deltas = dict(out.cf_delta_per_click(batch.ts, engine.cf_half_life_ms))
        for i in sorted(deltas.keys() | pairs.keys()):
            cf += cf_delta_records(
                deltas.get(i, CFDelta.empty()), ids_of, topics.clicks, partition, offsets[i],
                offsets[i], partition_of, pairs=pairs.get(i),
                pairs_directed=engine.coclick_directed,
            )  # fmt: skip
        return cf, None
    ts_max_of, pairs_ts_max_of = out.cluster_ts_max(batch.ts), out.pair_ts_max(batch.ts)
    cf = cf_delta_records(
        out.cf_delta, ids_of, topics.clicks, partition, first, last, partition_of, ts_max_of,
        out.pair_delta, pairs_ts_max_of, runtime.engine.coclick_directed,
    )  # fmt: skip
    return cf, (first, last, out.cf_delta, ts_max_of, out.pair_delta, pairs_ts_max_of)
