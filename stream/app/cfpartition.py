"""One owned cf-deltas partition: its CF table, its co-click table and the
bookkeeping that adds each click's delta to them exactly once.

A cf-delta record carries its source range (clicks partition, first and last
offset; in the ``source`` header and the value). Per (source partition,
cluster) the partition keeps:

- a *watermark*, the next source offset applied: a record starting below it
  is a duplicate (a replayed click's) and dropped, else it is added and the
  watermark moves to ``last + 1``;
- the source ranges applied *in-process* by the hot path's short cut
  (:meth:`stream.app.cfowner.CFOwner.apply_local`) whose records were not
  read back yet. A record inside the first of them is skipped (its echo, or a
  replayed click of it); a record starting past it retires it (its echo will
  not come: the worker died before producing it, or its send failed, and the
  clicks were replayed); any other record takes the watermark rule. Local
  applies do not move the watermark, so a record of an earlier range still
  on its way (sent before the partition was owned here, or by the previous
  owner of the source partition) is still added.

Both go into the snapshot with the table (:mod:`stream.app.cfstore`). Why
the hot path's side keeps these rules exact across crashes (the in-flight
marker, per-click replays) is argued in :mod:`stream.app.partition`.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from stream.app.cfstore import CFPartitionStore
from stream.core.cf import CFDelta, CFTable
from stream.core.coclick import CoClickTable
from stream.core.items import ItemCatalog
from stream.core.pairs import PairDelta
from stream.wire.cf_deltas import parse_source_header


class CFPartition:
    """One owned cf-deltas partition: its tables, watermarks, local ranges and store."""

    def __init__(
        self, partition: int, table: CFTable, store: CFPartitionStore, coclick: CoClickTable
    ):
        self.partition = partition
        self.table = table
        self.coclick = coclick  # the co-click rows of its clusters (and of the global scope)
        self.store = store
        self.next_offset = 0
        self.watermarks: dict[tuple[int, int], int] = {}
        self.named: set[int] = set()
        self.new_names: dict[int, str] = {}
        # catalogue rows already checked against ``named`` (grows with the catalogue)
        self.checked_rows = np.zeros(0, dtype=bool)
        self.highwater = 0
        self.dirty = False
        # (source partition, cluster) -> source ranges applied in-process, not read back yet
        self.local: dict[tuple[int, int], deque[tuple[int, int]]] = {}

    def echo_by_header(self, msg) -> bool | None:
        """Whether ``msg`` lies in a source range applied in-process, from its
        key and source header alone (no parse of the value); None without them."""
        source = parse_source_header(msg.headers)
        if source is None or msg.key is None or not msg.key.lstrip(b"-").isdigit():
            return None
        mark = (source[0], int(msg.key))
        if mark not in self.local:
            return False
        return self.applied_here(mark, source[1], source[2])

    def applied_here(self, mark: tuple[int, int], first: int, last: int) -> bool:
        """Whether a record of ``mark`` covering source offsets ``first..last``
        lies in a source range applied in-process (see the module doc);
        retires the ranges it has passed."""
        spans = self.local[mark]
        while spans and spans[0][1] < first:
            spans.popleft()  # passed: its record never came
        inside = bool(spans) and spans[0][0] <= first and last <= spans[0][1]
        if inside:
            if (first, last) == spans[0]:
                spans.popleft()  # its own record: nothing more of it to come
            self.watermarks[mark] = max(self.watermarks.get(mark, 0), last + 1)
        if not spans:
            del self.local[mark]
        return inside

    def duplicate(self, mark: tuple[int, int], first: int, last: int) -> bool:
        """The watermark rule for a record of ``mark`` covering ``first..last``:
        True (drop it) if it starts below the watermark, else the watermark
        moves past it."""
        if first < self.watermarks.get(mark, 0):
            return True
        self.watermarks[mark] = last + 1
        return False

    def add_local(
        self, source: int, first: int, last: int, mine: list[int], delta: CFDelta,
        catalog: ItemCatalog, ts_max: int, pairs: PairDelta,
    ) -> None:  # fmt: skip
        """Add the part of a hot-path batch's ``delta`` and ``pairs`` of
        clusters ``mine`` (source partition ``source``, offsets ``first..last``;
        ``ts_max`` the CF table's clock, ``pairs.ts_max`` the co-click table's)
        and remember the range, so its record is skipped when it comes back."""
        sel = np.isin(delta.cluster_ids, mine)
        keys = delta.item_keys[sel]
        self.note_names(catalog, catalog.rows_for_keys(keys), keys)
        self.table.add(
            CFDelta(
                delta.cluster_ids[sel], keys, delta.values[sel],
                delta.landmark_ms, delta.ts_min, ts_max,
            )
        )  # fmt: skip
        if len(pairs):
            mine_pairs = pairs.select(np.isin(pairs.scopes, mine))
            both = np.concatenate([mine_pairs.a, mine_pairs.b])
            self.note_names(catalog, catalog.rows_for_keys(both), both)
            self.coclick.add(mine_pairs)
        for cid in mine:
            self.local.setdefault((source, cid), deque()).append((first, last))
        self.dirty = True

    def forget_source(self, source: int) -> None:
        """Clicks partition ``source``'s log started over: drop the watermarks
        and in-process ranges of its old offsets."""
        for marks in (self.watermarks, self.local):
            for mark in [m for m in marks if m[0] == source]:
                del marks[mark]
        self.dirty = True

    def note_names(self, catalog: ItemCatalog, rows: np.ndarray, keys: np.ndarray) -> None:
        """Remember the item ids of keys the snapshot has not named yet
        (``rows``/``keys``: (n,) catalogue rows and item keys of a delta). Only
        rows not seen before are looked at, so this is no loop over every item
        of every delta."""
        if len(self.checked_rows) < len(catalog):
            grown = np.zeros(max(len(catalog), 2 * len(self.checked_rows)), dtype=bool)
            grown[: len(self.checked_rows)] = self.checked_rows
            self.checked_rows = grown
        new = np.flatnonzero(~self.checked_rows[rows])
        if not len(new):
            return
        for key, row in zip(keys[new].tolist(), rows[new].tolist(), strict=True):
            if key not in self.named:
                self.named.add(key)
                self.new_names[key] = catalog.ids[row]
        self.checked_rows[rows[new]] = True
