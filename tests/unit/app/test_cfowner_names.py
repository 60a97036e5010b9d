"""A CF partition's note of item names to snapshot (no broker: only that bookkeeping)."""

from __future__ import annotations

from stream.app.cfpartition import CFPartition
from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable
from stream.core.items import ItemCatalog


def _note(catalog: ItemCatalog, part: CFPartition, item_ids: list[str]) -> dict[int, str]:
    rows = catalog.rows_for(item_ids)
    part.new_names = {}
    part.note_names(catalog, rows, catalog.keys[rows])
    return part.new_names


def test_each_item_is_named_once_and_not_when_the_snapshot_named_it():
    catalog = ItemCatalog(2)
    part = CFPartition(0, CFTable(half_life_ms=3_600_000.0), None, CoClickTable(3_600_000.0))
    rows = catalog.rows_for(["a", "b", "c"])
    key = dict(zip("abc", catalog.keys[rows].tolist(), strict=True))
    part.named = {key["a"]}  # loaded from the snapshot

    assert _note(catalog, part, ["a", "b", "a", "b"]) == {key["b"]: "b"}
    assert part.checked_rows[rows[:2]].all()  # seen: not looked at again
    assert _note(catalog, part, ["b", "a"]) == {}
    # items the catalogue did not hold before grow the rows already checked
    new = _note(catalog, part, ["c", *(f"x{i}" for i in range(100)), "b"])
    assert len(new) == 101 and new[key["c"]] == "c" and key["b"] not in new
    assert part.named == {key["a"], key["b"], *new}
