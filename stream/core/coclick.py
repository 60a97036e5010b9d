"""In-cluster item-to-item CF: decayed co-click scores between items.

Two items are co-clicked when one user clicks both within ``window`` of their
recent clicks (:mod:`stream.core.pairs`). Each co-click is counted in the
scope of every cluster the user belongs to (weighted by membership share) and
in the global scope ``GLOBAL``, with forward decay (a score is
``sum(w * 2**((t - L) / h))`` relative to the table's landmark ``L``, as in
:mod:`stream.core.cf`), so old co-clicks fade without a sweep.

A directed table (``directed``) holds, per item, the items clicked *after*
it; an undirected one holds the items clicked with it, either way round.

A user's candidates are the neighbours of their recent items: per recent item,
the cluster's co-click row (its members' taste), backed off to the global row
where the cluster's counts are thin (:func:`score_rows`).

The table keeps its entries in flat arrays: a row (scope, item) is a chain of
slots (each slot links to the row's previous one), so adding a pair is O(1)
and reading a row walks only that row. Bounded: when the table has doubled
since the last compaction, entries decayed below ``prune_below`` go and each
row keeps its ``max_neighbours`` largest. A row's mass (its total, used by
the prior) counts everything ever added to it, decayed.

>>> from stream.core.pairs import PairDelta
>>> t = CoClickTable(half_life_ms=1e9, max_neighbours=10)
>>> t.add(PairDelta(*map(np.array, ([7, 7, 8, -1, -1], [1, 1, 1, 1, 1], [2, 3, 3, 2, 3],
...                                 [1.0, 1.0, 1.0, 1.0, 2.0])), 0, 0, 0))
>>> sorted(t.scores([(7, 1.0)], recent=[1], exclude=set(), prior=0.0).items())
[(2, 0.5), (3, 0.5)]
>>> t.neighbours(GLOBAL, 1), t.neighbours(GLOBAL, 3)
([(3, 2.0), (2, 1.0)], [(1, 2.0)])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numba
import numpy as np

from stream.core.cf import MIN_COMPACT_ENTRIES, REBASE_EXPONENT, _grown, decay_to
from stream.core.hashmap import Int64Map
from stream.core.pairs import GLOBAL, PairDelta

_EMPTY = np.zeros(0, dtype=np.int64)

#: A row as :func:`score_rows` reads it: (mass, [(other item, score)] largest first).
Row = tuple[float, list[tuple[int, float]]]


class CoClickTable:
    """Decayed co-click rows per (scope, item); see the module doc.

    ``half_life_ms``: decay of a co-click; ``max_neighbours``: entries a row
    keeps at a compaction; ``prune_below``: decayed score under which an
    entry goes at a compaction; ``directed``: a pair (a, b) is added a -> b
    only (its pairs come from :func:`~stream.core.pairs.pair_increments` with
    ``directed``). The worker and ``eval`` build their tables with
    :meth:`stream.core.pipeline.EngineConfig.coclick_table` (directed by default).
    """

    def __init__(
        self, half_life_ms: float, max_neighbours: int = 200, prune_below: float = 1e-3,
        capacity: int = 1024, directed: bool = False,
    ):  # fmt: skip
        if half_life_ms <= 0 or max_neighbours < 1:
            raise ValueError("half_life_ms must be > 0 and max_neighbours >= 1")
        self.directed = directed
        self.half_life_ms = float(half_life_ms)
        self.max_neighbours = max_neighbours
        self.prune_below = prune_below
        self.landmark_ms: int | None = None
        self.clock_ms: int | None = None  # the newest co-click added: "now" for reads
        self._compact_at = MIN_COMPACT_ENTRIES
        self._reset(capacity, capacity, capacity)

    def _reset(self, items: int, rows: int, slots: int) -> None:
        """Empty, with room for ``items``, ``rows`` and ``slots``."""
        self._item_index = Int64Map(items)  # item key -> local item number
        self._item_keys = np.zeros(items, dtype=np.int64)
        self._row_index = Int64Map(rows)  # (scope + 1) << 32 | local item -> row
        self._row_code = np.zeros(rows, dtype=np.int64)
        self._head = np.full(rows, -1, dtype=np.int64)  # row -> its newest slot
        self._mass = np.zeros(rows, dtype=np.float64)  # row -> everything added to it
        self._slot = Int64Map(slots)  # row << 32 | local other -> slot
        self._next = np.zeros(slots, dtype=np.int64)  # slot -> the row's previous slot
        self._other = np.zeros(slots, dtype=np.int64)  # slot -> local other item
        self._value = np.zeros(slots, dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        """Entries (one per (scope, item, other); an undirected pair is two)."""
        return self._n

    @property
    def n_rows(self) -> int:
        """Rows (scope, item) the table holds."""
        return len(self._row_index)

    # -- learning ------------------------------------------------------------
    def add(self, delta: PairDelta, unordered: np.ndarray | None = None) -> None:
        """Add a :class:`~stream.core.pairs.PairDelta`: ``a -> b``, and ``b -> a``
        unless the table is directed. ``unordered``: (k,) bool, entries whose
        order says nothing (undirected pairs), added both ways in a directed
        table too."""
        if not len(delta):
            return
        if self.landmark_ms is None:
            self.landmark_ms = delta.landmark_ms
        if (delta.ts_max - self.landmark_ms) / self.half_life_ms > REBASE_EXPONENT:
            self.rebase(delta.ts_max)
        scale = 2.0 ** ((delta.landmark_ms - self.landmark_ms) / self.half_life_ms)
        if not self.directed:
            back = np.arange(len(delta))  # the entries added b -> a too: all of them
        else:
            back = np.flatnonzero(unordered) if unordered is not None else _EMPTY
        a, b = self._local(delta.a), self._local(delta.b)
        items, others = np.concatenate([a, b[back]]), np.concatenate([b, a[back]])
        values = np.concatenate([delta.values, delta.values[back]]) * scale
        scopes = np.concatenate([delta.scopes, delta.scopes[back]])
        rows = self._rows_for(scopes, items)
        np.add.at(self._mass, rows, values)
        slots = self._slots_for(rows, others)  # may grow self._value
        np.add.at(self._value, slots, values)
        self.clock_ms = delta.ts_max if self.clock_ms is None else max(self.clock_ms, delta.ts_max)
        if self._n > self._compact_at:
            self.compact()

    def learn(
        self, scopes: list[tuple[int, float]], history: list[int], item: int, ts: int,
        weight: float = 1.0,
    ) -> None:  # fmt: skip
        """One click's co-clicks: ``item`` (clicked at ``ts``) with each of
        ``history`` (the user's earlier clicks) in each ``(scope, weight)`` and
        in :data:`GLOBAL` with ``weight``. Batches go through
        :mod:`stream.core.pairs` instead."""
        entries = [
            (scope, *((other, item) if self.directed else sorted((other, item))), w)
            for other in history
            if other != item
            for scope, w in [*scopes, (GLOBAL, weight)]
            if w > 0
        ]
        if entries:
            s, a, b, w = (np.array(col) for col in zip(*entries, strict=True))
            self.add(PairDelta(s, a, b, w.astype(np.float64), int(ts), int(ts), int(ts)))

    def _local(self, keys: np.ndarray) -> np.ndarray:
        """(n,) int64 local item numbers of item ``keys``, adding new ones."""
        n_items = len(self._item_index)
        local = self._item_index.get_or_insert(keys)
        if len(self._item_index) > n_items:
            self._item_keys = _grown(self._item_keys, len(self._item_index))
            new = local >= n_items
            self._item_keys[local[new]] = keys[new]
        return local

    def _rows_for(self, scopes: np.ndarray, local_items: np.ndarray) -> np.ndarray:
        """(n,) int64 rows of (scope, local item) pairs, adding new ones."""
        codes = ((scopes + 1) << 32) | local_items
        n_rows = len(self._row_index)
        rows = self._row_index.get_or_insert(codes)
        if len(self._row_index) > n_rows:
            need = len(self._row_index)
            self._row_code = _grown(self._row_code, need)
            self._mass = _grown(self._mass, need)
            if need > len(self._head):
                head = np.full(len(self._row_code), -1, dtype=np.int64)
                head[: len(self._head)] = self._head
                self._head = head
            new = rows >= n_rows
            self._row_code[rows[new]] = codes[new]
        return rows

    def _slots_for(self, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
        """(n,) int64 slots of (row, local other item) pairs, adding and chaining new ones."""
        codes = (rows << 32) | others
        n = self._n
        slots = self._slot.get_or_insert(codes)
        if len(self._slot) > n:
            self._n = len(self._slot)
            for name in ("_next", "_other", "_value"):
                setattr(self, name, _grown(getattr(self, name), self._n))
            _link(slots, rows, others, n, self._head, self._next, self._other)
        return slots

    def rebase(self, landmark_ms: int) -> None:
        """Move the landmark and rescale every stored value (rare)."""
        if self.landmark_ms is not None:
            factor = 2.0 ** ((self.landmark_ms - landmark_ms) / self.half_life_ms)
            self._value[: self._n] *= factor
            self._mass[: self.n_rows] *= factor
        self.landmark_ms = int(landmark_ms)

    # -- reading -------------------------------------------------------------
    def _decay_to(self, now_ms: int | None) -> float:
        return decay_to(self, now_ms)

    def _row(self, scope: int, item: int) -> int:
        local = self._item_index.get(np.array([item], dtype=np.int64))[0]
        if local < 0:
            return -1
        code = ((scope + 1) << 32) | int(local)
        return int(self._row_index.get(np.array([code], dtype=np.int64))[0])

    def row(self, scope: int, item: int, n: int | None = None, now_ms: int | None = None) -> Row:
        """The row of ``item`` in ``scope``: its mass and its ``n`` (default
        ``max_neighbours``) best neighbours ``[(item key, score)]``, largest
        first (ties by key), decayed to ``now_ms`` (default: the newest co-click)."""
        r = self._row(scope, item)
        if r < 0:
            return 0.0, []
        decay = self._decay_to(now_ms)
        others, values = _walk(self._head[r], self._next, self._other, self._value)
        n = self.max_neighbours if n is None else n
        if len(values) > n + 16:
            part = np.argpartition(-values, n + 16)[: n + 16]
            others, values = others[part], values[part]
        keys = self._item_keys[others]
        # to 9 digits, then by key: another batching sums in another order
        order = np.lexsort((keys, -_round_sig(values)))[:n]
        top = list(zip(keys[order].tolist(), (values[order] * decay).tolist(), strict=True))
        return float(self._mass[r] * decay), top

    def neighbours(self, scope: int, item: int) -> list[tuple[int, float]]:
        """The row of ``item`` in ``scope``, largest first (at most ``max_neighbours``)."""
        return self.row(scope, item)[1]

    def scores(
        self,
        scopes: list[tuple[int, float]],
        recent: list[int],
        exclude: set[int],
        prior: float = 1.0,
        per_item: int = 50,
        norm: float = 1.0,
        recency: float = 1.0,
    ) -> dict[int, float]:
        """:func:`score_rows` over this table's rows."""
        return score_rows(
            lambda scope, item: self.row(scope, item, per_item),
            scopes, recent, exclude, prior, per_item, norm, recency,
        )  # fmt: skip

    def entries(self, now_ms: int | None = None):
        """Every entry and row mass, decayed to ``now_ms``: ((k,) scopes, items,
        others int64 and scores float64, (r,) row scopes, row items int64 and
        masses float64)."""
        decay = self._decay_to(now_ms)
        rows = _row_of_slots(self._head, self._next, self.n_rows, self._n)
        codes = self._row_code[: self.n_rows]
        row_scopes, row_items = (codes >> 32) - 1, self._item_keys[codes & 0xFFFFFFFF]
        return (
            row_scopes[rows], row_items[rows], self._item_keys[self._other[: self._n]],
            self._value[: self._n] * decay, row_scopes, row_items,
            self._mass[: self.n_rows] * decay,
        )  # fmt: skip

    def load_entries(self, scopes, items, others, scores, row_scopes, row_items, masses, at_ms):
        """Replace the table by :meth:`entries` taken at ``at_ms`` (a snapshot)."""
        self.landmark_ms = self.clock_ms = int(at_ms)
        scopes, items, others, row_scopes, row_items = (
            np.asarray(a, np.int64) for a in (scopes, items, others, row_scopes, row_items)
        )
        self._load(np.unique(np.concatenate([row_items, others])), scopes, items, others,
                   np.asarray(scores, np.float64), row_scopes, row_items,
                   np.asarray(masses, np.float64))  # fmt: skip

    def _load(self, item_keys, scopes, items, others, stored, row_scopes, row_items, masses):
        """Replace the table by these rows and entries; ``item_keys``: every item
        they name, once."""
        # each map sized for its distinct keys, the entries looked up without inserting
        self._reset(max(len(item_keys), 1024), max(len(row_scopes), 1024), max(len(scopes), 1024))
        self._local(item_keys)
        rows = self._rows_for(row_scopes, self._item_index.get(row_items))
        self._mass[rows] = masses
        if len(scopes):
            local = self._item_index.get(items)
            entry_rows = self._row_index.get(((scopes + 1) << 32) | local)
            if (entry_rows < 0).any():
                raise ValueError("co-click entries name a row the rows do not list")
            slots = self._slots_for(entry_rows, self._item_index.get(others))
            self._value[slots] = stored

    # -- bounds --------------------------------------------------------------
    def compact(self) -> int:
        """Drop entries decayed below ``prune_below`` and keep each row's
        ``max_neighbours`` largest (ties by item key); a row keeps its mass
        unless it kept no entry and its mass decayed below ``prune_below`` too.
        Returns how many entries went."""
        before, n_rows = self._n, self.n_rows
        decay = self._decay_to(None)
        stored = self._value[: self._n]
        others = self._item_keys[self._other[: self._n]]
        sel, sel_rows = _kept(self._head, self._next, n_rows, stored, _round_sig(stored), others,
                              decay, self.prune_below, self.max_neighbours)  # fmt: skip
        codes = self._row_code[:n_rows]
        row_scopes, row_items = (codes >> 32) - 1, self._item_keys[codes & 0xFFFFFFFF]
        masses = self._mass[:n_rows].copy()
        live = masses * decay >= self.prune_below
        live[sel_rows] = True
        named = np.zeros(len(self._item_index), dtype=bool)
        named[codes[live] & 0xFFFFFFFF] = True
        named[self._other[sel]] = True
        self._load(self._item_keys[np.flatnonzero(named)], row_scopes[sel_rows],
                   row_items[sel_rows], others[sel], stored[sel], row_scopes[live],
                   row_items[live], masses[live])  # fmt: skip
        self._compact_at = max(MIN_COMPACT_ENTRIES, 2 * self._n)
        return before - self._n


def score_rows(
    row_of: Callable[[int, int], Row],
    scopes: list[tuple[int, float]],
    recent: list[int],
    exclude: set[int],
    prior: float = 1.0,
    per_item: int = 50,
    norm: float = 1.0,
    recency: float = 1.0,
) -> dict[int, float]:
    """Candidate scores for a user with clusters ``scopes`` [(id, share)] and
    ``recent`` items (newest last), from ``row_of(scope, item)`` (a
    :class:`CoClickTable`'s, or rows gathered from the tables' owners): per
    recent item and scope, the ``per_item`` best of its row, divided by the
    row's mass to the power ``norm`` (1: a share of the row, 0: raw decayed
    counts, which favour popular items); the cluster rows, by share, shrunk
    towards the global row by ``prior`` (a cluster row of mass T weighs
    ``T / (T + prior)``, the global row the rest); the i-th of n recent items
    (oldest first) weighs ``(i / n) ** recency``.

    >>> rows = {(5, 1): (1.0, [(2, 1.0)]), (GLOBAL, 1): (9.0, [(3, 9.0)])}
    >>> score_rows(lambda s, i: rows.get((s, i), (0.0, [])), [(5, 1.0)], [1], set(), prior=1.0)
    {2: 0.5, 3: 0.5}
    """
    out: dict[int, float] = defaultdict(float)
    n = len(recent)
    for pos, item in enumerate(recent):
        weight = ((pos + 1) / n) ** recency
        left = 1.0
        for scope, share in scopes:
            if share <= 0:
                continue
            total, top = row_of(scope, item)
            if total <= 0:
                continue
            trust = total / (total + prior) if prior > 0 else 1.0
            left -= share * trust
            f = weight * share * trust / total**norm
            for other, c in top[:per_item]:
                if other not in exclude:
                    out[other] += f * c
        if left > 1e-9:
            total, top = row_of(GLOBAL, item)
            if total > 0:
                f = weight * left / total**norm
                for other, c in top[:per_item]:
                    if other not in exclude:
                        out[other] += f * c
    return dict(out)


def _round_sig(x: np.ndarray, digits: int = 9) -> np.ndarray:
    """Non-negative ``x`` rounded to ``digits`` significant digits; values
    below 1e-290 (decayed for decades) are 0, as their scale would underflow.

    >>> _round_sig(np.array([0.0, 1e-320, 1234567891234.0, 2.0])).tolist()
    [0.0, 0.0, 1234567890000.0, 2.0]
    """
    x = np.where(x >= 1e-290, x, 0.0)
    scale = 10.0 ** (np.floor(np.log10(np.where(x > 0, x, 1.0))) - digits + 1)
    return np.round(x / scale) * scale


@numba.njit(cache=True)
def _link(slots, rows, others, first_new, head, nxt, other):
    """Chain the slots this add created onto their rows: a new slot's first
    occurrence is where ``slots`` reaches it, since the map numbers new keys
    in order of first appearance from ``first_new``."""
    expect = first_new
    for i in range(len(slots)):
        s = slots[i]
        if s == expect:
            nxt[s] = head[rows[i]]
            head[rows[i]] = s
            other[s] = others[i]
            expect += 1


@numba.njit(cache=True)
def _walk(head, nxt, other, value):
    """One row's slots: (local other items, stored scores)."""
    n = 0
    s = head
    while s >= 0:
        n += 1
        s = nxt[s]
    others = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float64)
    s, i = head, 0
    while s >= 0:
        others[i], values[i] = other[s], value[s]
        s = nxt[s]
        i += 1
    return others, values


@numba.njit(cache=True)
def _row_of_slots(head, nxt, n_rows, n_slots):
    """(n_slots,) int64: the row of each slot."""
    rows = np.empty(n_slots, dtype=np.int64)
    for r in range(n_rows):
        s = head[r]
        while s >= 0:
            rows[s] = r
            s = nxt[s]
    return rows


@numba.njit(cache=True)
def _kept(head, nxt, n_rows, stored, rounded, others, decay, prune_below, max_neighbours):
    """The slots a compaction keeps and their rows, row by row: per row, its
    slots whose decayed score reaches ``prune_below``, by ``rounded`` score
    (largest first) then ``others`` (the other item's key), the first
    ``max_neighbours``."""
    out = np.empty(len(stored), dtype=np.int64)
    out_rows = np.empty(len(stored), dtype=np.int64)
    buf = np.empty(16, dtype=np.int64)
    count = 0
    for r in range(n_rows):
        n = 0
        s = head[r]
        while s >= 0:
            if stored[s] * decay >= prune_below:
                if n == len(buf):
                    grown = np.empty(2 * n, dtype=np.int64)
                    grown[:n] = buf
                    buf = grown
                buf[n] = s
                n += 1
            s = nxt[s]
        if n == 0:
            continue
        slots = buf[:n]
        slots = slots[np.argsort(others[slots], kind="mergesort")]
        slots = slots[np.argsort(-rounded[slots], kind="mergesort")]
        for i in range(min(n, max_neighbours)):
            out[count] = slots[i]
            out_rows[count] = r
            count += 1
    return out[:count], out_rows[:count]
