"""The CF owner's short cut for deltas of clusters it owns (no broker: the
bookkeeping that keeps each click in its cluster's table exactly once)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest

from stream.app.cfowner import CFOwner
from stream.app.cfpartition import CFPartition
from stream.app.runtime import Runtime
from stream.core.cf import CFDelta, CFTable
from stream.core.coclick import CoClickTable
from stream.core.pairs import PairDelta
from stream.settings import Settings
from stream.wire.cf_deltas import cf_delta_records

HALF_LIFE = 3_600_000.0
# records with the source header (recognised without parsing) and without it
HEADERS = pytest.mark.parametrize("headers", [True, False], ids=["header", "no-header"])
N_CF = 2  # cf-deltas partitions; this owner holds partition 0 only


def part_of(cid: int) -> int:
    return 0 if cid < 0 else cid % N_CF  # the global co-click scope (-1) lives here too


def _owner() -> tuple[CFOwner, CFPartition]:
    """A CF owner that is never started, holding cf-deltas partition 0 (no
    store: these tests never snapshot), its co-click table directed as the
    settings' default is."""
    owner = CFOwner(Runtime.create(Settings(dim=2, trace_latency=False)))
    assert owner.runtime.settings.coclick_directed
    coclick = CoClickTable(HALF_LIFE, directed=True)
    part = CFPartition(0, CFTable(half_life_ms=HALF_LIFE), None, coclick)
    owner.owned = {0: part}
    return owner, part


@dataclass
class _Msg:
    """A cf-deltas record as the owner's consumer returns it."""

    offset: int
    key: bytes
    value: bytes
    headers: tuple


def _delta(owner: CFOwner, clusters: list[int], items: list[str], seed: int) -> CFDelta:
    rows = owner.runtime.items.rows_for(items)  # first: it may grow the catalogue
    keys = owner.runtime.items.keys[rows]
    values = np.random.default_rng(seed).uniform(0.5, 2.0, len(items))
    return CFDelta(np.asarray(clusters, dtype=np.int64), keys, values, 1000, 900, 1000)


def _records(
    owner: CFOwner, delta: CFDelta, source: int, first: int, last: int, pairs=None, directed=True
):
    """The cf-delta records of ``delta`` for partition 0, as the hot path sends them."""
    catalog = owner.runtime.items

    def ids_of(keys):
        return [catalog.ids[r] for r in catalog.rows_for_keys(keys).tolist()]

    recs = cf_delta_records(
        delta, ids_of, "clicks", source, first, last, part_of, pairs=pairs,
        pairs_directed=directed,
    )  # fmt: skip
    return [(key, value, headers) for q, key, value, headers in recs if q == 0]


class _Log:
    """The cf-deltas partition 0 as the owner reads it."""

    def __init__(self, headers: bool = True):
        self.offset = 0
        self.headers = headers  # False: records of a producer without the source header

    def msgs(self, records):
        out = [
            _Msg(self.offset + i, key, value, headers if self.headers else ())
            for i, (key, value, headers) in enumerate(records)
        ]  # fmt: skip
        self.offset += len(records)
        return out


def _expected(*deltas: CFDelta) -> CFTable:
    table = CFTable(half_life_ms=HALF_LIFE)
    for d in deltas:
        sel = np.asarray([part_of(c) == 0 for c in d.cluster_ids.tolist()], dtype=bool)
        table.add(CFDelta(d.cluster_ids[sel], d.item_keys[sel], d.values[sel], 1000, 900, 1000))
    return table


def _same(a: CFTable, b: CFTable) -> bool:
    ea, eb = a.entries(1000), b.entries(1000)
    oa, ob = np.lexsort(ea[:2]), np.lexsort(eb[:2])
    return (
        ea[0][oa].tolist() == eb[0][ob].tolist()
        and ea[1][oa].tolist() == eb[1][ob].tolist()
        and np.allclose(ea[2][oa], eb[2][ob])
    )


@HEADERS
def test_a_locally_applied_batch_is_not_added_again_when_its_records_come_back(headers):
    owner, part = _owner()
    log = _Log(headers)
    a = _delta(owner, [0, 0, 1, 2], ["x", "y", "x", "z"], seed=1)
    assert owner.apply_local(0, 10, 19, a, part_of) == 2  # clusters 0 and 2 live here
    assert _same(part.table, _expected(a))
    owner.apply(part, log.msgs(_records(owner, a, 0, 10, 19)))
    assert _same(part.table, _expected(a))
    c = owner.runtime.counters
    assert (c.cf_deltas_local, c.cf_deltas_echo, c.cf_deltas_applied) == (2, 2, 0)
    assert part.local == {} and part.watermarks == {(0, 0): 20, (0, 2): 20}
    # a replay of those clicks after the echo is a plain duplicate
    owner.apply(part, log.msgs(_records(owner, a, 0, 12, 12)))
    assert c.cf_deltas_duplicate == 2 and _same(part.table, _expected(a))


@HEADERS
def test_an_earlier_batch_still_on_its_way_is_added_after_a_local_apply(headers):
    owner, part = _owner()
    log = _Log(headers)
    early = _delta(owner, [0, 2], ["x", "y"], seed=2)  # sent before partition 0 was owned here
    later = _delta(owner, [0, 2], ["y", "z"], seed=3)
    owner.apply_local(0, 20, 29, later, part_of)
    owner.apply(part, log.msgs(_records(owner, early, 0, 10, 19)))
    owner.apply(part, log.msgs(_records(owner, later, 0, 20, 29)))
    assert _same(part.table, _expected(early, later))
    c = owner.runtime.counters
    assert (c.cf_deltas_applied, c.cf_deltas_echo, c.cf_deltas_duplicate) == (2, 2, 0)


@HEADERS
def test_clicks_replayed_one_by_one_inside_a_local_range_are_skipped_and_a_later_record_retires_it(
    headers,
):
    # the worker died after the local apply (kept by a snapshot) and before the
    # records went out; the restarted hot path re-sends the clicks one by one
    owner, part = _owner()
    log = _Log(headers)
    batch = _delta(owner, [0, 0], ["x", "y"], seed=4)
    owner.apply_local(1, 30, 31, batch, part_of)
    click30 = _delta(owner, [0], ["x"], seed=4)
    click31 = CFDelta(batch.cluster_ids[1:], batch.item_keys[1:], batch.values[1:], 1000, 900, 1000)
    owner.apply(part, log.msgs(_records(owner, click30, 1, 30, 30)))
    owner.apply(part, log.msgs(_records(owner, click31, 1, 31, 31)))
    assert _same(part.table, _expected(batch))
    assert part.local == {(1, 0): deque([(30, 31)])}  # its own record may still come
    nxt = _delta(owner, [0], ["z"], seed=5)
    owner.apply(part, log.msgs(_records(owner, nxt, 1, 32, 40)))
    assert part.local == {} and _same(part.table, _expected(batch, nxt))
    assert owner.runtime.counters.cf_deltas_applied == 1


def test_an_echo_with_the_source_header_is_skipped_without_parsing_its_value():
    owner, part = _owner()
    a = _delta(owner, [0], ["x"], seed=8)
    owner.apply_local(0, 10, 19, a, part_of)
    ((key, _, headers),) = _records(owner, a, 0, 10, 19)
    owner.apply(part, _Log().msgs([(key, b"not even JSON", headers)]))
    c = owner.runtime.counters
    assert (c.cf_deltas_echo, c.cf_deltas_rejected) == (1, 0) and _same(part.table, _expected(a))


def test_nothing_is_applied_locally_while_the_owner_holds_its_lock():
    owner, part = _owner()
    a = _delta(owner, [0], ["x"], seed=6)

    async def held():
        async with owner.lock:  # a snapshot or a rebalance in progress
            return owner.apply_local(0, 0, 9, a, part_of)

    assert asyncio.run(held()) == 0
    assert len(part.table) == 0 and part.local == {}
    assert owner.apply_local(0, 0, 9, _delta(owner, [1], ["x"], seed=7), part_of) == 0  # not owned


@HEADERS
def test_a_batch_below_the_watermark_is_not_added_locally_and_its_record_is_dropped(headers):
    """Issue 23: a batch re-run after a crash whose clicks a record already
    covered (the watermark is past its first offset) must not be added by the
    short cut; its own record then meets the watermark rule."""
    owner, part = _owner()
    log = _Log(headers)
    a = _delta(owner, [0, 2], ["x", "y"], seed=9)
    owner.apply(part, log.msgs(_records(owner, a, 0, 10, 29)))  # sent before the crash
    again = _delta(owner, [0, 2], ["x", "y"], seed=9)  # re-run as a batch 20..35
    assert owner.apply_local(0, 20, 35, again, part_of) == 0
    assert part.local == {} and _same(part.table, _expected(a))
    owner.apply(part, log.msgs(_records(owner, again, 0, 20, 35)))
    c = owner.runtime.counters
    assert c.cf_deltas_duplicate == 2 and _same(part.table, _expected(a))


def test_a_local_apply_moves_the_clock_to_its_own_clusters_newest_click():
    """The table's clock (scores are served decayed to it) is the newest click
    of its own clusters, not of the whole batch (cluster 1 lives elsewhere)."""
    owner, part = _owner()
    a = _delta(owner, [0, 1], ["x", "y"], seed=10)
    owner.apply_local(0, 0, 9, a, part_of, ts_max_of={0: 950, 1: 1000})
    assert part.table.clock_ms == 950


def _pairs(owner: CFOwner, scopes: list[int], lo: list[str], hi: list[str], seed: int):
    catalog = owner.runtime.items
    rows = [catalog.rows_for(items) for items in (lo, hi)]  # first: they may grow the catalogue
    a, b = (catalog.keys[r] for r in rows)
    values = np.random.default_rng(seed).uniform(0.5, 2.0, len(scopes))
    return PairDelta(np.asarray(scopes), a, b, values, 1000, 900, 1000)


def _co_rows(table: CoClickTable) -> dict:
    scopes, items, others, values, *_ = table.entries(1000)
    keys = zip(scopes.tolist(), items.tolist(), others.tolist(), strict=True)
    return {k: round(v, 9) for k, v in zip(keys, values.tolist(), strict=True)}


def _co_expected(*deltas: PairDelta, directed: bool = True) -> dict:
    table = CoClickTable(HALF_LIFE, directed=directed)
    for d in deltas:
        table.add(d.select(np.asarray([part_of(c) == 0 for c in d.scopes.tolist()], dtype=bool)))
    return _co_rows(table)


@HEADERS
def test_co_clicks_ride_with_their_clusters_deltas_and_count_once(headers):
    owner, part = _owner()
    log = _Log(headers)
    a = _delta(owner, [0, 2, 1], ["x", "y", "x"], seed=5)
    pa = _pairs(owner, [0, 2, 1, -1], ["x", "x", "x", "y"], ["y", "z", "z", "z"], seed=6)
    # clusters 0 and 2 and the global scope live here; cluster 1 does not
    assert owner.apply_local(0, 10, 19, a, part_of, None, pa) == 3
    assert _co_rows(part.coclick) == _co_expected(pa) != {}
    owner.apply(part, log.msgs(_records(owner, a, 0, 10, 19, pa)))  # the echoes
    assert _co_rows(part.coclick) == _co_expected(pa)
    c = owner.runtime.counters
    assert (c.cf_deltas_echo, c.cf_deltas_applied) == (3, 0)
    # the next batch comes through the topic only (pairs of users without a cluster
    # make a global record alone), then again as a replay: added once
    b = _delta(owner, [2], ["z"], seed=7)
    pb = _pairs(owner, [2, -1, -1], ["x", "x", "w"], ["z", "w", "y"], seed=8)
    owner.apply(part, log.msgs(_records(owner, b, 0, 20, 29, pb)))
    owner.apply(part, log.msgs(_records(owner, b, 0, 25, 25, pb)))
    assert _co_rows(part.coclick) == _co_expected(pa, pb)
    assert (c.cf_deltas_applied, c.cf_deltas_duplicate) == (2, 2)
    (w_row,) = owner.runtime.items.rows_for(["w"])
    assert part.coclick.row(-1, int(owner.runtime.items.keys[w_row]))[0] > 0
    # the global scope's record (no items) moves the co-click clock only, even in
    # the same fetch as a cluster's record
    clock = part.table.clock_ms
    late = PairDelta(np.array([-1]), pb.a[:1], pb.b[:1], np.ones(1), 5000, 5000, 5000)
    d = _delta(owner, [0], ["x"], seed=9)
    owner.apply(part, log.msgs(_records(owner, d, 0, 30, 30, late)))
    assert part.table.clock_ms == clock == 1000 and part.coclick.clock_ms == 5000


def test_undirected_records_reach_a_directed_table_both_ways_with_one_warning(caplog):
    owner, part = _owner()
    log = _Log()
    a = _delta(owner, [0], ["x"], seed=11)
    pa = _pairs(owner, [0, -1], ["x", "y"], ["y", "z"], seed=12)
    pb = _pairs(owner, [0], ["z"], ["x"], seed=13)
    with caplog.at_level("WARNING", logger="stream.app.cfowner"):
        owner.apply(part, log.msgs(_records(owner, a, 0, 0, 9, pa, directed=False)))
        owner.apply(part, log.msgs(_records(owner, a, 0, 10, 19, pb, directed=True)))
        owner.apply(part, log.msgs(_records(owner, a, 0, 20, 29, pa, directed=False)))
    undirected_twice = _co_expected(pa, pa, directed=False)
    want = {**undirected_twice}
    for key, value in _co_expected(pb).items():  # the directed record: one way only
        want[key] = round(want.get(key, 0.0) + value, 9)
    assert _co_rows(part.coclick) == want
    x, y, z = (
        int(k) for k in owner.runtime.items.keys[owner.runtime.items.rows_for(["x", "y", "z"])]
    )
    assert x in dict(part.coclick.neighbours(0, z))  # the directed pair: z, then x
    assert z not in dict(part.coclick.neighbours(0, x))
    assert x in dict(part.coclick.neighbours(0, y))  # the undirected x-y: both ways
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "coclick_directed" in caplog.records[0].message
