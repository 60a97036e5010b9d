"""A compiled int64 -> int64 hash map for the hot path.

A Python dict lookup is slow once the dict holds millions of keys (each
lookup is a chain of cache misses the interpreter cannot overlap). This map
keeps keys and values in two numpy arrays (open addressing, linear
probing, Fibonacci hashing, load factor at most 1/2) and looks up a whole
batch in one numba-compiled loop. Keys are any int64 except ``EMPTY`` (the
most negative int64), which is folded onto its neighbour.

Values are dense numbers handed out in order of first appearance
(:meth:`Int64Map.get_or_insert`), which is what row indexes need.

>>> m = Int64Map()
>>> m.get_or_insert(np.array([10, 20, 10, 30]))
array([0, 1, 0, 2])
>>> m.get(np.array([30, 99, 20]))
array([ 2, -1,  1])
>>> len(m)
3
"""

from __future__ import annotations

import numba
import numpy as np

EMPTY = np.iinfo(np.int64).min
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _home(key, bits):
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))


@numba.njit(cache=True)
def _get(table_keys, table_values, bits, keys, out):
    mask = (1 << bits) - 1
    for i in range(len(keys)):
        key = keys[i]
        pos = _home(key, bits)
        while True:
            k = table_keys[pos]
            if k == key:
                out[i] = table_values[pos]
                break
            if k == EMPTY:
                out[i] = -1
                break
            pos = (pos + 1) & mask


@numba.njit(cache=True)
def _move(old_keys, old_values, table_keys, table_values, bits):
    """Insert every entry of an old table (keys distinct) into a new empty one,
    in one pass over the old (no gathered copy of its entries first)."""
    mask = (1 << bits) - 1
    for i in range(len(old_keys)):
        key = old_keys[i]
        if key == EMPTY:
            continue
        pos = _home(key, bits)
        while table_keys[pos] != EMPTY:
            pos = (pos + 1) & mask
        table_keys[pos] = key
        table_values[pos] = old_values[i]


@numba.njit(cache=True)
def _get_or_insert(table_keys, table_values, bits, count, keys, out):
    """Look up ``keys``, inserting missing ones with values count, count+1, ...;
    returns the new count."""
    mask = (1 << bits) - 1
    for i in range(len(keys)):
        key = keys[i]
        pos = _home(key, bits)
        while True:
            k = table_keys[pos]
            if k == key:
                out[i] = table_values[pos]
                break
            if k == EMPTY:
                table_keys[pos] = key
                table_values[pos] = count
                out[i] = count
                count += 1
                break
            pos = (pos + 1) & mask
    return count


class Int64Map:
    """Keys (int64) -> dense values (int64); missing keys read as -1."""

    def __init__(self, capacity: int = 1024):
        self._count = 0
        self._alloc(max(4, int(np.ceil(np.log2(max(capacity, 8) * 2)))))

    def _alloc(self, bits: int) -> None:
        self._bits = bits
        self._keys = np.full(1 << bits, EMPTY, dtype=np.int64)
        self._values = np.full(1 << bits, -1, dtype=np.int64)

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _clean(keys) -> np.ndarray:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if len(keys) and keys.min() == EMPTY:
            keys = np.where(keys == EMPTY, EMPTY + 1, keys)
        return keys

    def get(self, keys) -> np.ndarray:
        """(n,) int64 values of ``keys``, -1 where missing."""
        keys = self._clean(keys)
        out = np.empty(len(keys), dtype=np.int64)
        _get(self._keys, self._values, self._bits, keys, out)
        return out

    def get_or_insert(self, keys) -> np.ndarray:
        """Values of ``keys``; missing keys get the next values ``len(self)``,
        ``len(self) + 1``, ... in order of first appearance."""
        keys = self._clean(keys)
        need = self._count + len(keys)
        if need > (1 << self._bits) // 2:
            self._rehash(need)
        out = np.empty(len(keys), dtype=np.int64)
        self._count = _get_or_insert(self._keys, self._values, self._bits, self._count, keys, out)
        return out

    def _rehash(self, need: int) -> None:
        keys, values = self._keys, self._values
        bits = self._bits
        while (1 << bits) // 2 < need:
            bits += 1
        self._alloc(bits)
        _move(keys, values, self._keys, self._values, self._bits)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All keys and values (in table order)."""
        live = self._keys != EMPTY
        return self._keys[live].copy(), self._values[live].copy()


@numba.njit(cache=True)
def _table_bits(n):
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


@numba.njit(cache=True)
def _group(keys, pos, rank, first, counts):
    """Number distinct keys in order of first appearance; returns how many."""
    bits = _table_bits(len(keys))
    mask = (1 << bits) - 1
    table_keys = np.empty(1 << bits, dtype=np.int64)
    table_ids = np.full(1 << bits, -1, dtype=np.int64)
    n_groups = 0
    for i in range(len(keys)):
        key = keys[i]
        p = _home(key, bits)
        while table_ids[p] >= 0 and table_keys[p] != key:
            p = (p + 1) & mask
        if table_ids[p] < 0:
            table_keys[p] = key
            table_ids[p] = n_groups
            first[n_groups] = i
            counts[n_groups] = 0
            n_groups += 1
        g = table_ids[p]
        pos[i] = g
        rank[i] = counts[g]
        counts[g] += 1
    return n_groups


def group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal keys in one pass.

    ``keys``: (n,) int64. Returns ``first`` (g,) index of each distinct key's
    first appearance (ascending), ``pos`` (n,) the key's group number (0..g-1,
    in order of first appearance) and ``rank`` (n,) how many earlier entries
    hold the same key.

    >>> [a.tolist() for a in group_keys(np.array([7, 3, 7, 7]))]
    [[0, 1], [0, 1, 0, 0], [0, 0, 1, 2]]
    """
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    n = len(keys)
    pos = np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    g = _group(keys, pos, rank, first, counts)
    return first[:g], pos, rank


@numba.njit(cache=True)
def _sum_pairs(a, b, values, out_a, out_b, out_sum):
    bits = _table_bits(len(a))
    mask = (1 << bits) - 1
    table_a = np.empty(1 << bits, dtype=np.int64)
    table_b = np.empty(1 << bits, dtype=np.int64)
    table_ids = np.full(1 << bits, -1, dtype=np.int64)
    n_pairs = 0
    for i in range(len(a)):
        p = _home(a[i] * np.int64(1_000_003) ^ b[i], bits)
        while table_ids[p] >= 0 and (table_a[p] != a[i] or table_b[p] != b[i]):
            p = (p + 1) & mask
        if table_ids[p] < 0:
            table_a[p] = a[i]
            table_b[p] = b[i]
            table_ids[p] = n_pairs
            out_a[n_pairs] = a[i]
            out_b[n_pairs] = b[i]
            out_sum[n_pairs] = 0.0
            n_pairs += 1
        out_sum[table_ids[p]] += values[i]
    return n_pairs


def sum_by_pair(a: np.ndarray, b: np.ndarray, values: np.ndarray):
    """Sum ``values`` per distinct (a, b) pair, pairs in order of first appearance.

    ``a``, ``b``: (n,) int64; ``values``: (n,) float64. Each pair's sum is
    accumulated in input order.

    >>> [x.tolist() for x in sum_by_pair(np.array([1, 2, 1]), np.array([5, 5, 5]),
    ...                                  np.array([1.0, 2.0, 3.0]))]
    [[1, 2], [5, 5], [4.0, 2.0]]
    """
    a = np.ascontiguousarray(a, dtype=np.int64)
    b = np.ascontiguousarray(b, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    n = len(a)
    out_a = np.empty(n, dtype=np.int64)
    out_b = np.empty(n, dtype=np.int64)
    out_sum = np.empty(n, dtype=np.float64)
    k = _sum_pairs(a, b, values, out_a, out_b, out_sum)
    return out_a[:k], out_b[:k], out_sum[:k]
