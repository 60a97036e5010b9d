"""What the clicks taught the item learners, kept with the users it came from
and shared by every worker.

The learner (:class:`stream.core.itemlearn.ItemLearner`) is one per worker.
So that it survives a restart and follows a partition to its next owner,
each clicks partition's store keeps that partition's part of the sums
(``l:<item_id>`` rows, written with the users and the source offset in the
same flush, so they hold exactly the flushed clicks). A worker's sums are
its own partitions' parts plus the parts the other partitions' owners
publish (:class:`stream.core.itemlearn.PartitionParts`), so every worker
learns an item from all of its clicks, as one worker (and ``eval``) would:

- each batch's additions are staged in its partition's store (:func:`stage`);
- each flush's ``l:`` totals go to the learnt-items topic, to the
  partition's own number
  (:meth:`~stream.app.stores.UserPartitionStore.flushing_learnt`), and a partition opened
  publishes all of its totals once (after a crash, its last records may
  hold clicks that were not flushed); every worker reads the topic
  (:class:`stream.app.feeds.LearntFeed`, :func:`receive`);
- a partition opened (a start, a restart after a crash, an assignment) adds
  its stored part in place of its published one and installs the vectors
  that are ready at once (:func:`add_partition`); clicks after its last
  flush are then applied again and add their part again;
- a partition closed (revoked, stopped) keeps its stored part in the
  learner, as that partition's published part from then on (it is what its
  last flush published; :func:`close_partition`), and a partition sent
  back to its last flush (a failed batch or flush) takes out what is not
  flushed (:func:`take_out`): those clicks are applied again (or, when the
  broker lost the log, dropped with the users' state after that flush).
  An item whose clicks fall below ``item_learn_min_clicks`` so loses its
  learnt vector at the next epoch boundary.

Exactly once up to float rounding for a worker's own partitions: the stores
sum a batch's additions before adding them to their totals, the learner adds
click by click. A published part is its owner's totals at its last flush
that arrived here.

What is not exact after a restart: a restored vector is installed from the
sums of every flushed click at once, where the run without the restart
installed it at the last epoch boundary (``item_learn_every_s``) before.
"""

from __future__ import annotations

import numpy as np

from stream.app.runtime import Runtime
from stream.app.stores import UserPartitionStore
from stream.wire.changelog import LEARNT_PREFIX, learnt_id_of, learnt_key


def stage(runtime: Runtime, store: UserPartitionStore) -> None:
    """Stage what the learner learnt since the last call (one batch of
    ``store``'s partition) in ``store``."""
    learner = runtime.learner
    if learner is None or not learner.record:
        return
    rows, values = learner.take_recorded()
    if not len(rows):
        return
    keys, ids = runtime.learnt_keys, runtime.items.ids
    out = []
    for row in rows.tolist():
        key = keys.get(row)
        if key is None:  # each learning item's key is made once
            key = keys[row] = learnt_key(ids[row])
        out.append(key)
    store.stage_learnt(out, values)


def add_partition(runtime: Runtime, partition: int, got: tuple[list[str], np.ndarray]) -> int:
    """Make ``partition`` this worker's own with its stored part ``got`` = (item
    ids, (n, 1 + dim) float64 from
    :meth:`~stream.app.stores.UserPartitionStore.learnt_rows`), in place of
    the part its owner published, and install the vectors ready now; returns
    how many were installed."""
    parts = runtime.learnt_parts
    if parts is None:
        return 0
    ids, values = got
    return len(parts.open(runtime.items, partition, runtime.items.rows_for(ids), values))


def close_partition(runtime: Runtime, partition: int, got: tuple[list[str], np.ndarray]) -> None:
    """Hand ``partition`` over: its stored part ``got`` (as :func:`add_partition`
    takes) stays in the learner as the partition's published part, which its
    next owner's records then change."""
    parts = runtime.learnt_parts
    if parts is not None:
        ids, values = got
        parts.close(runtime.items, partition, runtime.items.rows_for(ids), values)


def take_out(runtime: Runtime, got: tuple[list[str], np.ndarray]) -> None:
    """Take the clicks after a partition's last flush, ``got`` (as
    :func:`add_partition` takes), out of the learner: they are applied again.
    The vectors they touched are refreshed (or dropped, below
    ``item_learn_min_clicks``) at the next epoch boundary."""
    ids, values = got
    if runtime.learner is not None and ids:
        runtime.learner.add(runtime.items, runtime.items.rows_for(ids), -values, install=False)


def records(got: tuple[list[str], np.ndarray]) -> list[tuple[bytes, bytes]]:
    """A part ``got`` (as :func:`add_partition` takes) as learnt-items records."""
    ids, values = got
    values = np.ascontiguousarray(values, dtype=np.float64)
    return [(learnt_key(i), values[n].tobytes()) for n, i in enumerate(ids)]


def receive(runtime: Runtime, records: list[tuple[int, bytes, bytes]]) -> int:
    """Apply learnt-items records ``(partition, key, value)`` in topic order (see
    :class:`~stream.core.itemlearn.PartitionParts`); a record of the wrong
    length (another ``dim``) is skipped. Returns the records applied."""
    parts = runtime.learnt_parts
    if parts is None:
        return 0
    width = 8 * (1 + parts.learner.dim)
    latest: dict[int, dict[str, bytes]] = {}  # totals: the last record of a key wins
    for partition, key, value in records:
        if key.startswith(LEARNT_PREFIX) and value is not None and len(value) == width:
            latest.setdefault(partition, {})[learnt_id_of(key)] = value
    for partition, values in latest.items():
        totals = np.frombuffer(b"".join(values.values()), dtype=np.float64).reshape(len(values), -1)
        parts.receive(runtime.items, partition, runtime.items.rows_for(list(values)), totals)
    return sum(len(v) for v in latest.values())
