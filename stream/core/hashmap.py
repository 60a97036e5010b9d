"""A vectorised int64 -> int64 hash map for the hot path.

A Python dict costs about a microsecond per lookup once it holds millions of
keys (each lookup is a chain of cache misses the interpreter cannot overlap).
This map does a whole batch of lookups with a few numpy gathers: open
addressing, linear probing, Fibonacci hashing, load factor at most 1/2.
Keys are any int64 except ``EMPTY`` (the most negative int64), which is
folded onto its neighbour.

>>> m = Int64Map()
>>> m.get_or_insert(np.array([10, 20, 10, 30]))
array([0, 1, 0, 2])
>>> m.get(np.array([30, 99, 20]))
array([ 2, -1,  1])
>>> len(m)
3
"""

from __future__ import annotations

import numpy as np

EMPTY = np.iinfo(np.int64).min
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class Int64Map:
    """Keys (int64) -> values (int64); missing keys read as -1."""

    def __init__(self, capacity: int = 1024):
        bits = max(4, int(np.ceil(np.log2(max(capacity, 8) * 2))))
        self._alloc(bits)
        self._count = 0

    def _alloc(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._keys = np.full(1 << bits, EMPTY, dtype=np.int64)
        self._values = np.full(1 << bits, -1, dtype=np.int64)

    def __len__(self) -> int:
        return self._count

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            h = keys.view(np.uint64) * _GOLDEN
        return (h >> np.uint64(64 - self._bits)).astype(np.int64)

    @staticmethod
    def _clean(keys) -> np.ndarray:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if len(keys) and keys.min() == EMPTY:
            keys = np.where(keys == EMPTY, EMPTY + 1, keys)
        return keys

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot of each key, and whether it is there (else the slot is the empty one
        where probing stopped)."""
        pos = self._home(keys)
        found = np.zeros(len(keys), dtype=bool)
        active = np.arange(len(keys))
        while len(active):
            p = pos[active]
            k = self._keys[p]
            hit = k == keys[active]
            found[active[hit]] = True
            go_on = ~hit & (k != EMPTY)
            active = active[go_on]
            pos[active] = (pos[active] + 1) & self._mask
        return pos, found

    def get(self, keys) -> np.ndarray:
        """(n,) int64 values of ``keys``, -1 where missing."""
        keys = self._clean(keys)
        pos, found = self._find(keys)
        return np.where(found, self._values[pos], -1)

    def _insert_new(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert keys that are absent and unique (no checks)."""
        self._reserve(len(keys))
        self._place(keys, values, self._home(keys))

    def _reserve(self, extra: int) -> None:
        if self._count + extra > (1 << self._bits) // 2:
            self._rehash(self._count + extra)

    def _place(self, keys: np.ndarray, values: np.ndarray, pos: np.ndarray) -> None:
        """Put absent, unique keys at the first free slot from ``pos`` on.

        Keys racing for one free slot are all written; the one that stays is
        the winner, the others probe on.
        """
        active = np.arange(len(keys))
        while len(active):
            p = pos[active]
            free = self._keys[p] == EMPTY
            cand, slots = active[free], p[free]
            self._keys[slots] = keys[cand]
            won = self._keys[slots] == keys[cand]
            self._values[slots[won]] = values[cand[won]]
            placed = np.zeros(len(keys), dtype=bool)
            placed[cand[won]] = True
            active = active[~placed[active]]
            pos[active] = (pos[active] + 1) & self._mask
        self._count += len(keys)

    def _rehash(self, need: int) -> None:
        live = self._keys != EMPTY
        keys, values = self._keys[live], self._values[live]
        bits = self._bits
        while (1 << bits) // 2 < need:
            bits += 1
        self._alloc(bits)
        self._count = 0
        self._insert_new(keys, values)

    def put(self, keys, values) -> None:
        """Set ``keys`` (unique) to ``values`` (n,) int64, inserting missing ones."""
        keys = self._clean(keys)
        values = np.ascontiguousarray(values, dtype=np.int64)
        pos, found = self._find(keys)
        self._values[pos[found]] = values[found]
        if not found.all():
            self._insert_new(keys[~found], values[~found])

    def get_or_insert(self, keys) -> np.ndarray:
        """Values of ``keys``; missing keys get the next values ``len(self)``,
        ``len(self) + 1``, ... in order of first appearance (use this method
        alone on a map whose values are dense row numbers)."""
        keys = self._clean(keys)
        self._reserve(len(keys))
        pos, found = self._find(keys)
        values = np.where(found, self._values[pos], -1)
        if not found.all():
            miss = np.flatnonzero(~found)
            uniq, first, inverse = np.unique(keys[miss], return_index=True, return_inverse=True)
            order = np.argsort(first, kind="stable")
            new_values = np.empty(len(uniq), dtype=np.int64)
            new_values[order] = self._count + np.arange(len(uniq))
            self._place(uniq, new_values, pos[miss][first])
            values[miss] = new_values[inverse.ravel()]
        return values

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All keys and values (in table order)."""
        live = self._keys != EMPTY
        return self._keys[live].copy(), self._values[live].copy()
