"""RocksDB snapshots of the CF and co-click tables of one cf-deltas partition.

The cf-deltas topic itself is the tables' log: a snapshot records the offset
it covers, the de-duplication watermarks and the source ranges applied
in-process (:mod:`stream.app.cfowner`), and everything after it is replayed
from the topic.
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
from rocksdict import WriteBatch

from stream.app.rocks import db_memory, int_bytes, open_db, read_int
from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable

logger = logging.getLogger(__name__)

META_CF_OFFSET = b"m:offset"
META_CF_SNAPSHOT = b"m:snapshot"
NAME_PREFIX = b"n:"
META_CF_WATERMARKS = b"m:watermarks"
META_CF_LOCAL = b"m:local"
# the arrays of CoClickTable.entries, in order, as named in a snapshot
COCLICK_ARRAYS = ("co_scopes", "co_items", "co_others", "co_scores", "co_row_scopes",
                  "co_row_items", "co_masses")  # fmt: skip
# a snapshot overwrites the last one, but a memtable keeps every version until
# it is flushed: with RocksDB's 64 MB memtables, two of them per store filled
# up with dead snapshots (a few MB every cf_snapshot_interval_s) over minutes
CF_WRITE_BUFFER_BYTES = 4 << 20


class CFPartitionStore:
    """Snapshots of the CF tables of one cf-deltas partition.

    The cf-deltas topic itself is the log of the tables: a snapshot records
    the offset it covers, and everything after it is replayed from the topic.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = open_db(self.path, CF_WRITE_BUFFER_BYTES)

    def load(
        self, table: CFTable, coclick: CoClickTable
    ) -> tuple[int, dict[tuple[int, int], int], dict[int, str], dict]:
        """Fill ``table`` and ``coclick`` from the snapshot; return (next offset,
        watermarks, item names, local ranges)."""
        blob = self._db.get(META_CF_SNAPSHOT)
        if blob is None:
            return 0, {}, {}, {}
        with np.load(io.BytesIO(blob)) as npz:
            table.load_entries(npz["clusters"], npz["keys"], npz["scores"], int(npz["at_ms"]))
            if "co_at_ms" in npz:  # snapshots from before co-clicks have none
                coclick.load_entries(*(npz[name] for name in COCLICK_ARRAYS),
                                     at_ms=int(npz["co_at_ms"]))  # fmt: skip
                # snapshots from before coclick_directed existed were undirected
                directed = bool(npz["co_directed"]) if "co_directed" in npz else False
                if directed != coclick.directed and len(npz["co_scopes"]):
                    logger.warning(
                        "%s: co-click snapshot written with coclick_directed=%s, this worker "
                        "runs %s: its rows mix the two kinds until the old ones decay",
                        self.path, directed, coclick.directed,
                    )  # fmt: skip
        marks = {
            (int(p), int(c)): int(o) for p, c, o in orjson.loads(self._db.get(META_CF_WATERMARKS))
        }
        names = {}
        for key, value in self._db.items(from_key=NAME_PREFIX):
            if not key.startswith(NAME_PREFIX):
                break
            names[read_int(key[len(NAME_PREFIX) :])] = value.decode("utf-8")
        local: dict[tuple[int, int], deque[tuple[int, int]]] = {}
        for p, c, first, last in orjson.loads(self._db.get(META_CF_LOCAL) or b"[]"):
            local.setdefault((int(p), int(c)), deque()).append((int(first), int(last)))
        return read_int(self._db.get(META_CF_OFFSET)), marks, names, local

    def save(
        self,
        table: CFTable,
        coclick: CoClickTable,
        next_offset: int,
        watermarks: dict[tuple[int, int], int],
        new_names: dict[int, str],
        local: dict[tuple[int, int], Iterable[tuple[int, int]]] | None = None,
    ) -> None:
        """Write a snapshot, its offset, watermarks, the ids of items first seen
        since the last snapshot (``new_names``: item key -> item id) and the
        source ranges applied in-process whose records were not read back yet
        (``local``: (source partition, cluster) -> [(first, last) offsets]) in
        one WriteBatch."""
        at = table.clock_ms or 0
        clusters, keys, scores = table.entries(at)
        co_at = coclick.clock_ms or 0
        co = dict(zip(COCLICK_ARRAYS, coclick.entries(co_at), strict=True))
        buf = io.BytesIO()
        np.savez(buf, clusters=clusters, keys=keys, scores=scores, at_ms=np.int64(at),
                 co_at_ms=np.int64(co_at), co_directed=np.bool_(coclick.directed),
                 **co)  # fmt: skip
        wb = WriteBatch(raw_mode=True)
        wb.put(META_CF_SNAPSHOT, buf.getvalue())
        wb.put(META_CF_OFFSET, int_bytes(next_offset))
        wb.put(META_CF_WATERMARKS, orjson.dumps([[p, c, o] for (p, c), o in watermarks.items()]))
        ranges = [[p, c, a, b] for (p, c), spans in (local or {}).items() for a, b in spans]
        wb.put(META_CF_LOCAL, orjson.dumps(ranges))
        for key, item_id in new_names.items():
            wb.put(NAME_PREFIX + int_bytes(key), item_id.encode("utf-8"))
        self._db.write(wb)

    def memory(self) -> dict[str, int]:
        """Bytes RocksDB holds in memory for this store (:func:`db_memory`)."""
        return db_memory(self._db)

    def close(self) -> None:
        self._db.close()
