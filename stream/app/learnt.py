"""What the clicks taught a worker's item learner, kept with the users it came from.

The learner (:class:`stream.core.itemlearn.ItemLearner`) is one per worker,
fed by the clicks of every partition it owns. So that it survives a restart
and follows a partition to its next owner, each clicks partition's store
keeps that partition's part of the sums (``l:<item_id>`` rows, written with
the users and the source offset in the same flush, so they hold exactly the
flushed clicks). The worker's sums are the sum of its partitions' parts:

- each batch's additions are staged in its partition's store (:func:`stage`);
- a partition opened (a start, a restart after a crash, an assignment) adds
  its stored part and installs the vectors that are ready at once
  (:func:`add_partition`); clicks after its last flush are then applied again
  and add their part again;
- a partition closed (revoked, stopped) takes its part out, and a partition
  sent back to its last flush (a failed batch or flush) takes out what is
  not flushed (:func:`take_out`): those clicks are applied again (or, when
  the broker lost the log, dropped with the users' state after that flush).
  An item whose clicks fall below ``item_learn_min_clicks`` so loses its
  learnt vector at the next epoch boundary.

Exactly once up to float rounding: the stores sum a batch's additions before
adding them to their totals, the learner adds click by click.

What is not exact after a restart: a restored vector is installed from the
sums of every flushed click at once, where the run without the restart
installed it at the last epoch boundary (``item_learn_every_s``) before.
"""

from __future__ import annotations

import numpy as np

from stream.app.runtime import Runtime
from stream.app.stores import UserPartitionStore
from stream.wire.changelog import learnt_key


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


def add_partition(runtime: Runtime, got: tuple[list[str], np.ndarray]) -> int:
    """Add a partition's part ``got`` = (item ids, (n, 1 + dim) float64 from
    :meth:`~stream.app.stores.UserPartitionStore.learnt_rows`) and install
    the vectors ready now; returns how many were installed."""
    ids, values = got
    if runtime.learner is None or not ids:
        return 0
    rows = runtime.items.rows_for(ids)
    return len(runtime.learner.add(runtime.items, rows, values, install=True))


def take_out(runtime: Runtime, got: tuple[list[str], np.ndarray]) -> None:
    """Take a part ``got`` (as :func:`add_partition` takes) out of the learner;
    the vectors it touched are refreshed (or dropped, below
    ``item_learn_min_clicks``) at the next epoch boundary."""
    ids, values = got
    if runtime.learner is not None and ids:
        runtime.learner.add(runtime.items, runtime.items.rows_for(ids), -values, install=False)
