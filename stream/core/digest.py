"""A deterministic digest of the engine state, to compare two runs exactly.

Users are hashed in id order: unit vector rounded to 1e-4, click count,
memberships and their scores rounded to 1e-4. CF entries are hashed in
(cluster, item) order with their decayed score (at ``at_ms``, by default the
newest time the tables saw) rounded to 9 significant digits; entries below
``floor`` (the tables' ``prune_below``: a compaction may drop them or not,
depending on when it ran) are left out. Co-click entries and row masses
(:func:`coclick_digest`) are hashed the same way.

CF scores are sums of float64 terms whose order and landmark depend on how
the clicks were batched (relative differences up to ~1.5e-15 between batch
sizes 1000 and 37 over 60k clicks); 9 digits hide that, and still see one
click more or less in an entry unless the click has decayed below 1e-8 of
the entry's score. The user vectors are computed bit-identically whatever the
batching (see :mod:`stream.core.vectors`).

>>> from stream.core.state import InMemoryUserStore, user_dtype
>>> store = InMemoryUserStore(user_dtype(2, 1, 1))
>>> a = state_digest(store.iter_chunks(), [])
>>> b = store.read_many(["u1"]); b.rows["mean"] = [[0.6, 0.8]]; b.rows["weight"] = 1.0
>>> store.write_many(b)
>>> a == state_digest(store.iter_chunks(), []), len(a)
(False, 64)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from stream.core.cf import CFTable
from stream.core.coclick import CoClickTable
from stream.core.items import unit_rows

CF_DIGEST_DIGITS = 9


def _round_sig(x: np.ndarray, digits: int = CF_DIGEST_DIGITS) -> np.ndarray:
    """Mantissa and exponent of ``x`` rounded to ``digits`` significant digits, as int64 pairs."""
    x = np.asarray(x, dtype=np.float64)
    exp = np.floor(np.log10(np.where(x > 0, x, 1.0))).astype(np.int64)
    mant = np.round(x / 10.0 ** (exp - digits + 1)).astype(np.int64)
    # 0.9999999999999999 rounds up to 10**digits: the same number as 1.0, written as 1.0 is
    carry = mant >= 10**digits
    mant[carry] //= 10
    exp[carry] += 1
    return np.stack([mant, exp], axis=1)


def users_digest(chunks: Iterable[tuple[list[str], np.ndarray]]) -> bytes:
    """SHA-256 over all users, in id order, whatever order the chunks come in."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for chunk_ids, rows in chunks:
        ids.extend(chunk_ids)
        parts.append(rows)
    h = hashlib.sha256()
    if not ids:
        return h.digest()
    rows = np.concatenate(parts)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    rows = rows[order]
    vec = np.round(unit_rows(rows["mean"]).astype(np.float64) * 1e4).astype(np.int32)
    scores = np.round(rows["scores"].astype(np.float64) * 1e4).astype(np.int32)
    for j, i in enumerate(order):
        h.update(ids[i].encode("utf-8"))
        h.update(b"\x00")
        h.update(vec[j].tobytes())
        h.update(rows["clicks"][j].tobytes())
        h.update(rows["cluster_ids"][j].tobytes())
        h.update(scores[j].tobytes())
    return h.digest()


def cf_digest(
    tables: Iterable[CFTable], at_ms: int | None = None, floor: float | None = None
) -> bytes:
    """SHA-256 over the CF entries of several tables (disjoint clusters), sorted;
    ``floor`` defaults to the largest ``prune_below`` of the tables."""
    tables = list(tables)
    if floor is None:
        floor = max((t.prune_below for t in tables), default=0.0)
    if at_ms is None:
        clocks = [t.clock_ms for t in tables if t.clock_ms is not None]
        at_ms = max(clocks) if clocks else 0
    cols = [t.entries(at_ms) for t in tables]
    h = hashlib.sha256()
    if not cols:
        return h.digest()
    clusters = np.concatenate([c[0] for c in cols])
    keys = np.concatenate([c[1] for c in cols])
    scores = np.concatenate([c[2] for c in cols])
    keep = scores >= floor
    clusters, keys, scores = clusters[keep], keys[keep], scores[keep]
    order = np.lexsort((keys, clusters))
    h.update(clusters[order].astype("<i8").tobytes())
    h.update(keys[order].astype("<i8").tobytes())
    # the one rounding of CF scores: float order differs with the batching (module doc)
    h.update(_round_sig(scores[order]).astype("<i8").tobytes())
    return h.digest()


def coclick_digest(tables: Iterable[CoClickTable]) -> bytes | None:
    """SHA-256 over the co-click entries and row masses of several tables
    (disjoint scopes), sorted, decayed to the newest co-click any of them saw
    and rounded as the CF scores are; entries below the tables' ``prune_below``
    are left out. None when the tables hold nothing."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return None
    at_ms = max(t.clock_ms for t in tables)
    floor = max(t.prune_below for t in tables)
    cols = [t.entries(at_ms) for t in tables]
    h = hashlib.sha256()
    for first, last in ((0, 4), (4, 7)):  # the entries, then the rows' masses
        keys = [np.concatenate([c[i] for c in cols]) for i in range(first, last - 1)]
        values = np.concatenate([c[last - 1] for c in cols])
        keep = values >= floor
        keys, values = [k[keep] for k in keys], values[keep]
        order = np.lexsort(keys[::-1])
        for k in keys:
            h.update(k[order].astype("<i8").tobytes())
        h.update(_round_sig(values[order]).astype("<i8").tobytes())
    return h.digest()


def state_digest(
    user_chunks: Iterable[tuple[list[str], np.ndarray]],
    cf_tables: Iterable[CFTable],
    at_ms: int | None = None,
    coclick_tables: Iterable[CoClickTable] = (),
) -> str:
    """Hex SHA-256 of the users, CF tables and co-click tables (see the module
    docstring; co-click tables that hold nothing leave the digest as without them)."""
    h = hashlib.sha256()
    h.update(users_digest(user_chunks))
    h.update(cf_digest(cf_tables, at_ms))
    co = coclick_digest(coclick_tables)
    if co is not None:
        h.update(co)
    return h.hexdigest()
