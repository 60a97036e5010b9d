"""Versioned, immutable sets of cluster centres with stable integer ids.

A :class:`CentreSet` changes only by becoming a new version (bootstrap, merge,
recompute). Ids are never reused: a retired id keeps an alias to the live id
that took its members, and aliases are kept flat (always pointing at a live id).

>>> cs = CentreSet.create([[1, 0], [0, 1]], reason="bootstrap", created_at_ms=0)
>>> cs.version, cs.ids.tolist(), cs.next_id
(1, [0, 1], 2)
>>> ids, scores = cs.search(np.array([[0.6, 0.8]], dtype=np.float32), 1)
>>> ids.tolist(), scores.round(2).tolist()
([[1]], [[0.8]])

Its record on the centres topic is written and read by :mod:`stream.wire.centres`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import faiss
import numpy as np

from stream.core.items import unit_rows

REASONS = ("bootstrap", "merge", "recompute")


@dataclass(frozen=True, eq=False)
class CentreSet:
    """One version of the centres.

    - ``version``: int >= 1
    - ``ids``: (k,) int64 live cluster ids
    - ``vectors``: (k, d) float32 unit rows, row i is the centre of ``ids[i]``
    - ``sizes``: (k,) int64 member counts when the set was made
    - ``aliases``: retired id -> live id (flat)
    - ``reason``: "bootstrap" | "merge" | "recompute"; ``created_at_ms``: epoch ms
    - ``stats``: free-form figures of the job that made it
    """

    version: int
    ids: np.ndarray
    vectors: np.ndarray
    sizes: np.ndarray
    aliases: Mapping[int, int]
    reason: str
    created_at_ms: int
    stats: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        sizes = np.ascontiguousarray(self.sizes, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(ids) == 0:
            raise ValueError("vectors must be (k, d) with one row per id, k >= 1")
        if sizes.shape != ids.shape:
            raise ValueError("sizes must have one entry per id")
        if len(np.unique(ids)) != len(ids) or ids.min() < 0:
            raise ValueError("ids must be unique and >= 0")
        if self.reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}")
        if self.version < 1:
            raise ValueError("version must be >= 1")
        live = set(ids.tolist())
        aliases = {int(k): int(v) for k, v in self.aliases.items()}
        if set(aliases) & live or not set(aliases.values()) <= live:
            raise ValueError("aliases must map retired ids to live ids")
        ids.flags.writeable = False
        vectors.flags.writeable = False
        sizes.flags.writeable = False
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "aliases", aliases)

    @classmethod
    def create(
        cls,
        vectors,
        reason: str = "bootstrap",
        ids: Sequence[int] | None = None,
        sizes: Sequence[int] | None = None,
        version: int = 1,
        aliases: Mapping[int, int] | None = None,
        created_at_ms: int | None = None,
        stats: Mapping[str, object] | None = None,
    ) -> CentreSet:
        """A centre set from raw (k, d) vectors (normalised here); ids default to 0..k-1."""
        vectors = unit_rows(np.asarray(vectors, dtype=np.float32))
        k = len(vectors)
        return cls(
            version=version,
            ids=np.arange(k) if ids is None else np.asarray(ids),
            vectors=vectors,
            sizes=np.zeros(k, dtype=np.int64) if sizes is None else np.asarray(sizes),
            aliases=dict(aliases or {}),
            reason=reason,
            created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
            stats=dict(stats or {}),
        )

    # -- shape -------------------------------------------------------------
    @property
    def k(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def next_id(self) -> int:
        """Smallest id never used by this set or its history (live or retired)."""
        used = max(int(self.ids.max()), max(self.aliases, default=-1))
        return used + 1

    # -- lookups -----------------------------------------------------------
    @cached_property
    def row_lookup(self) -> np.ndarray:
        """(next_id,) int64: id -> row, retired ids -> their target's row, else -1."""
        lookup = np.full(self.next_id, -1, dtype=np.int64)
        lookup[self.ids] = np.arange(self.k)
        for old, target in self.aliases.items():
            lookup[old] = lookup[target]
        return lookup

    @cached_property
    def vectors64(self) -> np.ndarray:
        """(k, d) float64 copy of the centres, for exact rescoring."""
        return self.vectors.astype(np.float64)

    def resolve(self, ids: np.ndarray) -> np.ndarray:
        """Map ids (any shape, int64) to live ids through aliases; unknown and -1 -> -1.

        >>> cs = CentreSet.create([[1, 0]], ids=[5], aliases={2: 5}, created_at_ms=0)
        >>> cs.resolve(np.array([2, 5, 7, -1])).tolist()
        [5, 5, -1, -1]
        """
        ids = np.asarray(ids, dtype=np.int64)
        rows = self.rows_of(ids)
        return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows (same shape as ``ids``) of live or aliased ids; -1 where unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        lookup = self.row_lookup
        inside = (ids >= 0) & (ids < len(lookup))
        return np.where(inside, lookup[np.where(inside, ids, 0)], -1)

    def size_of(self) -> dict[int, int]:
        return dict(zip(self.ids.tolist(), self.sizes.tolist(), strict=True))

    @cached_property
    def index(self) -> faiss.IndexFlatIP:
        """A faiss inner-product index over the centres (row order = ``ids``)."""
        index = faiss.IndexFlatIP(self.dim)
        index.add(self.vectors)
        return index

    def search(self, x: np.ndarray, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``n`` centres of each row of ``x`` (m, d) by cosine.

        Returns ids (m, n) int64 (-1 when k < n) and scores (m, n) float32.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (m, {self.dim})")
        scores, rows = self.index.search(x, n)
        ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        return ids, scores

    # -- versions ----------------------------------------------------------
    def successor(
        self,
        ids,
        vectors,
        sizes,
        aliases: Mapping[int, int],
        reason: str,
        created_at_ms: int | None = None,
        stats: Mapping[str, object] | None = None,
    ) -> CentreSet:
        """The next version: ``aliases`` are new retirements; older ones are re-pointed
        so every alias ends at a live id."""
        new_ids = np.asarray(ids, dtype=np.int64)
        live = set(new_ids.tolist())
        merged = {int(k): int(v) for k, v in aliases.items()}
        dropped = set(self.ids.tolist()) - live - set(merged)
        if dropped:
            raise ValueError(f"ids {sorted(dropped)} leave the set without an alias")
        reused = live & set(self.aliases)
        if reused:
            raise ValueError(f"retired ids {sorted(reused)} cannot come back")
        for old, target in self.aliases.items():
            merged[old] = merged.get(target, target)
        for old, target in list(merged.items()):
            seen = set()
            while target not in live:
                if target in seen or target not in merged:
                    raise ValueError(f"alias chain from {old} does not end at a live id")
                seen.add(target)
                target = merged[target]
            merged[old] = target
        return CentreSet.create(
            vectors,
            reason=reason,
            ids=new_ids,
            sizes=sizes,
            version=self.version + 1,
            aliases=merged,
            created_at_ms=created_at_ms,
            stats=stats,
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, CentreSet):
            return NotImplemented
        return (
            self.version == other.version
            and self.reason == other.reason
            and self.created_at_ms == other.created_at_ms
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.vectors, other.vectors)
            and np.array_equal(self.sizes, other.sizes)
            and dict(self.aliases) == dict(other.aliases)
        )

    __hash__ = None  # type: ignore[assignment]
