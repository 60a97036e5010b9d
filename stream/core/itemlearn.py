"""Item vectors learnt from the clicks, for items that come without one.

An item with no given vector (not in ``items``, no metadata) learns one from
the users who click it: the mean of their clusters' centres, each click split
over the clicker's clusters by membership share (the same split as the CF
increment it makes). This is the cluster part of the Res-embedding idea
(item = the centre of the clusters it lives in + a residual); the residual is
not learnt, so items clicked by the same clusters get the same direction.
Once an item's clicks by users with clusters reach ``min_clicks``, its vector
is installed in the catalogue (:meth:`ItemCatalog.set_learnt`) and then
refreshed as more clicks arrive; clicks on it then move their users' vectors
as a given vector would. A given vector replaces a learnt one for good.

Learnt vectors are installed only at epoch boundaries of event time (every
``every_ms``): before the first click, in stream order, whose time falls in a
later epoch than any click before it (:meth:`ItemLearner.cuts`).
:func:`stream.core.pipeline.process_batch` splits a batch there, so the state
after a stream does not depend on how it was cut into batches.

A log with no vectors at all has no centres to learn from, so ``seed`` gives
an item met without any vector, while no item has a given one, a seed: a
random unit vector drawn from its stable key (the same on every process).
Users are then means of their items' seeds, a random projection of what they
click, which is enough for the first centre set; the learnt vectors replace
the seeds as clicks arrive. Where some items have given vectors the users get
theirs from those, and seeds would only add noise.

The learner reads what :func:`stream.core.pipeline.process_batch` computes for
the CF (per click and cluster, weight = click weight x membership share).

A worker keeps what it learnt with the users it learnt it from: with
``record`` on, :meth:`ItemLearner.take_recorded` hands over what the clicks
since the last call added, for the clicks partition's store to persist with
the users; opening a partition adds its stored sums back
(:meth:`ItemLearner.add`). What the other partitions' owners publish is
added too, and a partition handed over stays in as published
(:class:`PartitionParts`), so a worker's sums are those of every partition's
clicks.

>>> from stream.core.centres import CentreSet
>>> from stream.core.items import ItemCatalog
>>> cat = ItemCatalog(dim=2)
>>> rows = cat.rows_for(["new"])
>>> centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
>>> learner = ItemLearner(dim=2, min_clicks=2, every_ms=1000)
>>> learner.cuts(np.array([0, 10, 999]))  # the first click starts the clock
[]
>>> learner.learn(cat, centres, rows[[0]], np.array([0]), np.array([1.0]))
>>> learner.learn(cat, centres, rows[[0, 0]], np.array([0, 1]), np.array([0.5, 0.5]))
>>> learner.cuts(np.array([1500, 1200, 2100]))  # install before clicks 0 and 2
[0, 2]
>>> learner.install(cat).tolist(), bool(cat.learnt[0])
([0], True)
>>> cat.vectors[0].round(3).tolist()
[0.949, 0.316]
"""

from __future__ import annotations

import logging

import numpy as np

from stream.core.centres import CentreSet
from stream.core.items import ItemCatalog

logger = logging.getLogger(__name__)


def seed_vectors(keys: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) float32 unit seed vectors, one per stable item key (n,) int64,
    each drawn from a generator seeded by its key.

    >>> a = seed_vectors(np.array([7, 8]), 4)
    >>> a.shape, bool(np.allclose(np.linalg.norm(a, axis=1), 1))
    ((2, 4), True)
    >>> bool(np.array_equal(a[1], seed_vectors(np.array([8]), 4)[0]))
    True
    """
    out = np.empty((len(keys), dim), dtype=np.float32)
    for i, key in enumerate(np.asarray(keys, dtype=np.int64).tolist()):
        v = np.random.default_rng(key).standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out


class ItemLearner:
    """Per item without a given vector: the share-weighted sum of its clickers'
    centres and how many clicks it holds (see the module doc).

    - ``min_clicks``: clicks (by users with clusters) before a vector is installed
    - ``every_ms``: learnt vectors are installed at most once per epoch this long
    - ``seed``: give items met without any vector a seed vector
    - memory: one float64 row of ``dim`` per item learning (items with a given
      vector take none)
    """

    def __init__(
        self, dim: int, min_clicks: float = 3.0, every_ms: float = 60_000.0, seed: bool = True
    ):
        if dim < 1 or min_clicks <= 0 or every_ms <= 0:
            raise ValueError("dim must be >= 1, min_clicks and every_ms > 0")
        self.dim = dim
        self.min_clicks = float(min_clicks)
        self.every_ms = float(every_ms)
        self.seed_new = seed
        self.epoch: int | None = None  # the latest epoch a click was seen in
        self._pending = np.zeros(0, dtype=np.int64)  # rows learnt from since the last install
        self._table = _RowTable(1 + dim)  # per item learning: the clicks, then the sum
        self.installed = 0  # vectors installed, counting refreshes
        self.record = False  # keep what learn() adds for take_recorded()
        self._recorded: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def learning(self) -> bool:
        """Items learn vectors (not only seeds)."""
        return bool(np.isfinite(self.min_clicks))

    @property
    def pending(self) -> np.ndarray:
        """(p,) int64 rows learnt from since the last :meth:`install`."""
        return self._pending

    def seed(self, items: ItemCatalog, rows: np.ndarray) -> int:
        """Seed vectors for the ``rows`` (n,) int64 that have none, while no item
        has a given vector; returns how many."""
        if not self.seed_new or not len(rows) or items.any_given:
            return 0
        rows = np.unique(rows[~items.has_vector[rows]])
        if len(rows):
            items.set_learnt(rows, seed_vectors(items.keys[rows], items.dim), seed=True)
        return len(rows)

    @property
    def n(self) -> int:
        """Slots in use: items learning."""
        return self._table.n

    @property
    def _slot(self) -> np.ndarray:
        return self._table.slot

    @property
    def _clicks(self) -> np.ndarray:
        return self._table.values[:, 0]

    @property
    def _sum(self) -> np.ndarray:
        return self._table.values[:, 1:]

    def _slots(self, rows: np.ndarray) -> np.ndarray:
        """Slots of catalogue rows, new ones made for rows without one."""
        return self._table.slots(rows)

    def learn(
        self,
        items: ItemCatalog,
        centres: CentreSet,
        rows: np.ndarray,
        clusters: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """Add clicks to the items' sums (installed at the next :meth:`install`).

        ``rows`` (n,) int64 catalogue rows of the clicked items, ``clusters``
        (n,) int64 a cluster of the clicker, ``weights`` (n,) float64 the click's
        weight x that cluster's share (one entry per click and cluster, as the
        CF increments). Entries on items with a given vector are skipped.
        """
        rows = np.asarray(rows, dtype=np.int64)
        keep = ~items.given_at(rows)
        if not keep.any():
            return
        rows, w = rows[keep], np.asarray(weights, dtype=np.float64)[keep]
        centre_rows = centres.rows_of(np.asarray(clusters, dtype=np.int64)[keep])
        live = centre_rows >= 0
        rows, w, centre_rows = rows[live], w[live], centre_rows[live]
        if not len(rows):
            return
        slots = self._slots(rows)
        added = w[:, None] * centres.vectors64[centre_rows]
        np.add.at(self._sum, slots, added)
        np.add.at(self._clicks, slots, w)
        self._pending = np.union1d(self._pending, rows)
        if self.record:
            self._recorded.append((rows, w, added))

    def take_recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`learn` added since the last call (with ``record`` on), per
        item: rows (u,) int64 sorted, and (u, 1 + dim) float64 values, the clicks
        then the sum (the layout :meth:`add` takes)."""
        if not self._recorded:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 1 + self.dim))
        rows = np.concatenate([r for r, _, _ in self._recorded])
        order = np.argsort(rows, kind="stable")  # sums in stream order, per item
        values = np.empty((len(rows), 1 + self.dim))
        values[:, 0] = np.concatenate([w for _, w, _ in self._recorded])[order]
        values[:, 1:] = np.concatenate([a for _, _, a in self._recorded])[order]
        self._recorded = []
        rows = rows[order]
        starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
        return rows[starts], np.add.reduceat(values, starts, axis=0)

    def add(
        self, items: ItemCatalog, rows: np.ndarray, values: np.ndarray, install: bool
    ) -> np.ndarray:
        """Add stored sums: ``rows`` (n,) int64 distinct catalogue rows,
        ``values`` (n, 1 + dim) float64 clicks then sum (negative: take them
        out). ``install``: install the vectors of these items that are ready
        now (an opened partition: they were installed, or about to be, where
        its clicks were applied before); otherwise they are refreshed, or
        dropped below ``min_clicks``, at the next :meth:`install`. Returns the
        rows installed now.

        >>> from stream.core.items import ItemCatalog
        >>> cat = ItemCatalog(dim=2)
        >>> rows = cat.rows_for(["a", "b"])
        >>> learner = ItemLearner(dim=2, min_clicks=2)
        >>> learner.add(cat, rows, np.array([[2.0, 3.0, 0.0], [1.0, 0.0, 1.0]]), True).tolist()
        [0]
        >>> cat.vectors[0].tolist(), bool(cat.has_vector[1])
        ([1.0, 0.0], False)
        >>> _ = learner.add(cat, rows[:1], np.array([[-2.0, -3.0, 0.0]]), False)
        >>> learner.stats(cat)["learnt_from_clicks"], learner.install(cat).tolist()
        (1.0, [])
        >>> bool(cat.has_vector[0])  # below min_clicks again
        False
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return rows
        slots = self._slots(rows)
        self._clicks[slots] += values[:, 0]
        self._sum[slots] += values[:, 1:]
        emptied = slots[np.abs(self._clicks[slots]) < 1e-9]  # all taken out, up to rounding
        self._clicks[emptied] = 0.0
        self._sum[emptied] = 0.0
        if not install:
            self._pending = np.union1d(self._pending, rows)
            return np.zeros(0, dtype=np.int64)
        return self._install(items, rows)

    def cuts(self, ts: np.ndarray) -> list[int]:
        """Positions in a batch's click times ``ts`` (n,) int64, in stream order,
        before which learnt vectors are installed: each click whose epoch is later
        than every earlier click's (and the learner's). Moves the learner's epoch."""
        if not len(ts):
            return []
        epochs = np.floor_divide(np.asarray(ts, dtype=np.float64), self.every_ms).astype(np.int64)
        start = epochs[0] if self.epoch is None else self.epoch
        highest = np.maximum.accumulate(np.maximum(epochs, start))
        before = np.concatenate(([start], highest[:-1]))
        self.epoch = int(highest[-1])
        return np.flatnonzero(highest > before).tolist()

    def install(self, items: ItemCatalog) -> np.ndarray:
        """Install the vectors of items learnt from since the last call that have
        ``min_clicks``; returns their rows (sorted). A learnt vector whose item
        fell below ``min_clicks`` (a partition's sums taken out) is dropped."""
        rows, self._pending = self._pending, np.zeros(0, dtype=np.int64)
        return self._install(items, rows)

    def _install(self, items: ItemCatalog, rows: np.ndarray) -> np.ndarray:
        """Install the vectors of ``rows`` (n,) int64 (with slots) that have
        ``min_clicks``, drop the learnt ones below it; given ones are left
        alone. Returns the rows installed."""
        rows = rows[~items.given_at(rows)]
        enough = self._clicks[self._slot[rows]] >= self.min_clicks - 1e-9
        items.drop_learnt(rows[~enough])
        ready = rows[enough]
        if len(ready):
            items.set_learnt(ready, self._sum[self._slot[ready]])
            self.installed += len(ready)
        return ready

    @staticmethod
    def ready(items: ItemCatalog) -> np.ndarray:
        """(n_items,) bool: the item's vector is a learnt one (not a seed)."""
        return items.learnt & ~items.seeded

    def stats(self, items: ItemCatalog) -> dict:
        """Item counts for /stats and the log: with a given vector, a learnt one,
        a seed only, and none; and the clicks the sums hold (by users with
        clusters: each click counts its weight once)."""
        ready = self.ready(items)
        return {
            "given": int(items.given.sum()),
            "learnt": int(ready.sum()),
            "seed_only": int(items.seeded.sum()),
            "none": int((~items.has_vector).sum()),
            "learnt_from_clicks": round(float(self._clicks[: self.n].sum()), 6),
        }


class PartitionParts:
    """A learner's sums as one part per clicks partition, so that every worker
    learns from every click, not only from those of the partitions it owns.

    - A partition this worker owns (**its own**): the part comes from the
      partition's store (:meth:`open`), grows with its clicks (through
      :meth:`ItemLearner.learn`) and leaves when the partition is handed over
      (:meth:`close`). That part is exact: the store keeps it with the users.
    - Every other partition (**published**): its owner publishes the part's
      totals per item after each flush (totals, not increments, so a record
      read twice or late changes nothing); :meth:`receive` adds the change
      since the totals held. Records of its own partitions are ignored: the
      store's part stands for them. :meth:`open` takes a partition's
      published part out; :meth:`close` keeps the part the learner holds as
      the partition's published totals (what its last flush published), so
      the learner does not change, and the next owner's records then add
      their changes.

    A published part lags its owner by the last flush in flight; it is
    current once that flush's totals arrive. Vectors changed by
    :meth:`receive` are installed at the learner's next epoch boundary, as a
    learnt one is. Memory: per partition this worker does not own, one
    float64 row of ``1 + dim`` per item it published (arrays grown by
    doubling) and an int64 slot per catalogue row.

    >>> from stream.core.items import ItemCatalog
    >>> cat = ItemCatalog(dim=2)
    >>> rows = cat.rows_for(["a", "b"])
    >>> parts = PartitionParts(ItemLearner(dim=2, min_clicks=1))
    >>> parts.receive(cat, 1, rows[:1], np.array([[2.0, 2.0, 0.0]]))  # another worker's
    >>> parts.open(cat, 0, rows[1:], np.array([[1.0, 0.0, 1.0]])).tolist()  # its own
    [1]
    >>> parts.receive(cat, 1, rows[:1], np.array([[3.0, 3.0, 0.0]]))  # totals: +1
    >>> parts.receive(cat, 0, rows[1:], np.array([[9.0, 0.0, 9.0]]))  # its own: ignored
    >>> parts.learner.stats(cat)["learnt_from_clicks"]
    4.0
    >>> parts.close(cat, 0, rows[1:], np.array([[1.0, 0.0, 1.0]]))  # now a published part
    >>> parts.receive(cat, 0, rows[1:], np.array([[2.0, 0.0, 2.0]]))  # its next owner's
    >>> parts.learner.stats(cat)["learnt_from_clicks"], parts.own
    (5.0, set())
    """

    def __init__(self, learner: ItemLearner):
        self.learner = learner
        self.own: set[int] = set()
        self.published: dict[int, _RowTable] = {}

    def receive(
        self, items: ItemCatalog, partition: int, rows: np.ndarray, totals: np.ndarray
    ) -> None:
        """A partition's published totals: ``rows`` (n,) int64 distinct catalogue
        rows, ``totals`` (n, 1 + dim) float64 clicks then sum."""
        if partition in self.own or not len(rows):
            return
        table = self.published.setdefault(partition, _RowTable(1 + self.learner.dim))
        change = table.replace(np.asarray(rows, dtype=np.int64), totals)
        self.learner.add(items, rows, change, install=False)

    def open(
        self, items: ItemCatalog, partition: int, rows: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """The partition becomes this worker's own, with its store's part (as
        :meth:`ItemLearner.add` takes); returns the rows installed now."""
        if partition in self.own:  # a hand-over that never ended: its part is in twice
            logger.warning("partition %d opened again without a close", partition)
        else:
            self.own.add(partition)
            table = self.published.pop(partition, None)
            if table is not None:
                held, totals = table.items()
                self.learner.add(items, held, -totals, install=False)
        return self.learner.add(items, rows, values, install=True)

    def close(
        self, items: ItemCatalog, partition: int, rows: np.ndarray, values: np.ndarray
    ) -> None:
        """The partition, whose store's part is ``values`` at ``rows``, is handed over."""
        if partition in self.own:
            self.own.discard(partition)
            table = self.published[partition] = _RowTable(1 + self.learner.dim)
            table.replace(np.asarray(rows, dtype=np.int64), values)


class _RowTable:
    """A (n, width) float64 row per catalogue row that has one, grown by
    doubling: the learner's sums and each published part's totals."""

    def __init__(self, width: int):
        self.slot = np.full(0, -1, dtype=np.int64)  # catalogue row -> slot, -1 none
        self.values = np.zeros((0, width))
        self.n = 0  # slots in use

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """Slots of ``rows`` (n,) int64 (repeats allowed), new zero rows made for
        rows without one."""
        top = int(rows.max()) + 1
        if top > len(self.slot):
            grown = np.full(max(top, 2 * len(self.slot)), -1, dtype=np.int64)
            grown[: len(self.slot)] = self.slot
            self.slot = grown
        new = np.unique(rows[self.slot[rows] < 0])
        if len(new):
            need = self.n + len(new)
            if need > len(self.values):
                grown = np.zeros((max(need, 2 * len(self.values), 64), self.values.shape[1]))
                grown[: self.n] = self.values[: self.n]
                self.values = grown
            self.slot[new] = np.arange(self.n, need)
            self.n = need
        return self.slot[rows]

    def replace(self, rows: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Set the rows of ``rows`` (distinct) to ``totals``; returns new minus old."""
        if not len(rows):
            return np.zeros((0, self.values.shape[1]))
        slots = self.slots(rows)
        change = np.asarray(totals, dtype=np.float64) - self.values[slots]
        self.values[slots] = totals
        return change

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n,) int64, values (n, width) float64) of every row held."""
        rows = np.flatnonzero(self.slot >= 0)
        return rows, self.values[self.slot[rows]]
