"""Item vectors: an item's explicit vector, or one derived from its metadata.

Metadata (category, subcategory, tags, entities) becomes a vector by signed
feature hashing: every token ``"field:value"`` is hashed with BLAKE2b (never
Python's salted ``hash``) to a few (dimension, sign) pairs, weighted by field,
and the sum is normalised. The result is the same on every process and machine.

The :class:`ItemCatalog` maps item ids to rows of a float32 matrix. Every item id
the engine meets gets a row (and a stable 63-bit key, used wherever an item is
persisted); rows of items with no vector yet are zero and flagged. A row's vector
is either given (explicit or from metadata) or learnt from the clicks
(:mod:`stream.core.itemlearn`); a given vector always replaces a learnt one, never
the reverse.

>>> v = metadata_vector(8, category="sport", tags=["tennis"])
>>> v.dtype, v.shape, round(float(np.linalg.norm(v)), 6)
(dtype('float32'), (8,), 1.0)
>>> bool(np.array_equal(v, metadata_vector(8, category="sport", tags=["tennis"])))
True
>>> cat = ItemCatalog(dim=8)
>>> cat.upsert("i1", vector=[1, 0, 0, 0, 0, 0, 0, 0])
>>> rows = cat.rows_for(["i1", "unseen"])
>>> cat.has_vector[rows].tolist()
[True, False]
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numba
import numpy as np

from stream.core.hashmap import Int64Map

logger = logging.getLogger(__name__)

#: Weight of each metadata field in the hashed vector.
FIELD_WEIGHTS = {"category": 3.0, "subcategory": 2.0, "tags": 1.0, "entities": 1.0}
#: Hashed positions per token: several halve the damage of a collision.
HASHES_PER_TOKEN = 4


def item_key(item_id: str) -> int:
    """Stable 63-bit non-negative key of an item id (BLAKE2b, same everywhere).

    >>> item_key("i1") == item_key("i1"), item_key("i1") >= 0
    (True, True)
    """
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _tokens(category, subcategory, tags, entities) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for field, values in (
        ("category", [category] if category else []),
        ("subcategory", [subcategory] if subcategory else []),
        ("tags", tags or []),
        ("entities", entities or []),
    ):
        for value in values:
            text = str(value).strip().lower()
            if text:
                out.append((f"{field}:{text}", FIELD_WEIGHTS[field]))
    return out


def metadata_vector(
    dim: int,
    category: str | None = None,
    subcategory: str | None = None,
    tags: Sequence[str] | None = None,
    entities: Sequence[str] | None = None,
) -> np.ndarray:
    """Unit (dim,) float32 vector hashed from metadata tokens.

    Raises ``ValueError`` when there is no token at all.
    """
    tokens = _tokens(category, subcategory, tags, entities)
    if not tokens:
        raise ValueError("item metadata has no category, subcategory, tag or entity")
    acc = np.zeros(dim, dtype=np.float64)
    for token, weight in tokens:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=4 * HASHES_PER_TOKEN).digest()
        for j in range(HASHES_PER_TOKEN):
            word = int.from_bytes(digest[4 * j : 4 * j + 4], "little")
            sign = 1.0 if word & 1 else -1.0
            acc[(word >> 1) % dim] += sign * weight
    norm = np.linalg.norm(acc)
    if norm == 0.0:  # tokens cancelled out exactly: fall back to the first token's slot
        acc[0] = 1.0
        norm = 1.0
    return (acc / norm).astype(np.float32)


@numba.njit(cache=True, inline="always")
def unit_row_into(x, out) -> None:
    """``out[:] = x / |x|`` for one row (float32 in and out, float64 inside, left
    to right), or zeros; the one normalisation every part of the core uses."""
    norm2 = 0.0
    for j in range(len(x)):
        norm2 += np.float64(x[j]) * np.float64(x[j])
    inv = 1.0 / np.sqrt(norm2) if norm2 > 0 else 0.0
    for j in range(len(x)):
        out[j] = np.float32(np.float64(x[j]) * inv)


@numba.njit(cache=True)
def _unit_rows(x, out):
    for i in range(x.shape[0]):
        unit_row_into(x[i], out[i])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of a (n, d) array scaled to unit length, as float32 (zero rows stay zero).

    Each row is normalised on its own (float64 sum, left to right), so a row's
    result does not depend on the other rows or on how rows are batched.
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x32)
    if x32.ndim != 2:
        raise ValueError("unit_rows needs a (n, d) array")
    _unit_rows(x32, out)
    return out


class ItemCatalog:
    """Item id -> row of a float32 vector matrix, growing as items arrive.

    - ``vectors``: (n, dim) float32, unit rows, zero where ``has_vector`` is False
    - ``has_vector``: (n,) bool
    - ``keys``: (n,) int64 stable keys (:func:`item_key`)
    - ``ids``: list[str], row -> item id
    """

    def __init__(self, dim: int, capacity: int = 1024):
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = dim
        self._row = Int64Map(capacity)  # salted str hash -> row
        self._key_row = Int64Map(capacity)  # stable key -> row
        self.ids: list[str] = []
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._has = np.zeros(capacity, dtype=bool)
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._epoch = np.zeros(capacity, dtype=np.int64)
        self._learnt = np.zeros(capacity, dtype=bool)
        self._seed = np.zeros(capacity, dtype=bool)
        self.any_given = False  # some item has had a given vector

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: len(self.ids)]

    @property
    def has_vector(self) -> np.ndarray:
        return self._has[: len(self.ids)]

    @property
    def keys(self) -> np.ndarray:
        return self._keys[: len(self.ids)]

    @property
    def epoch(self) -> np.ndarray:
        """(n,) int64: how many times each row's vector was set (for caches)."""
        return self._epoch[: len(self.ids)]

    @property
    def learnt(self) -> np.ndarray:
        """(n,) bool: the row's vector was learnt from clicks, not given."""
        return self._learnt[: len(self.ids)]

    @property
    def given(self) -> np.ndarray:
        """(n,) bool: the row has a given vector (explicit or from metadata)."""
        return self.has_vector & ~self.learnt

    @property
    def seeded(self) -> np.ndarray:
        """(n,) bool: the row's vector is a seed (random, from its key), not learnt yet."""
        return self._seed[: len(self.ids)]

    @property
    def informative(self) -> np.ndarray:
        """(n,) bool: the row has a given or learnt vector (a seed says nothing of it)."""
        return self.has_vector & ~self.seeded

    @property
    def rankable(self) -> np.ndarray:
        """(n,) bool: the rows embedding recall may recommend: the given ones when
        any item has a given vector, else the informative ones.

        A learnt vector is a mix of its clickers' cluster centres (no residual,
        :mod:`stream.core.itemlearn`): it sits near every member of those clusters,
        ties with the other items they click and would crowd the given vectors
        out of each user's top items; the cluster's CF ranks such items instead.
        """
        return self.given if self.any_given else self.informative

    def given_at(self, rows: np.ndarray) -> np.ndarray:
        """(n,) bool: :attr:`given` of some rows, without touching the others."""
        return self._has[rows] & ~self._learnt[rows]

    @property
    def n_with_vector(self) -> int:
        return int(self.has_vector.sum())

    def set_learnt(self, rows: np.ndarray, vectors: np.ndarray, seed: bool = False) -> None:
        """Install learnt vectors ``(n, dim)`` for ``rows`` (n,) int64, normalised
        here (``seed``: they are seeds); rows with a given vector are left as they are."""
        rows = np.asarray(rows, dtype=np.int64)
        keep = ~self.given_at(rows)
        rows = rows[keep]
        units = unit_rows(np.asarray(vectors)[keep])
        ok = units.any(axis=1)
        rows, units = rows[ok], units[ok]
        self._vectors[rows] = units
        self._has[rows] = True
        self._learnt[rows] = True
        self._seed[rows] = seed
        self._epoch[rows] += 1

    def drop_learnt(self, rows: np.ndarray) -> None:
        """Take the learnt vectors (not seeds, not given ones) of ``rows`` (n,)
        int64 away: the items have no vector until they learn one again.

        >>> cat = ItemCatalog(dim=2)
        >>> cat.set_learnt(cat.rows_for(["a"]), np.array([[1.0, 0.0]]))
        >>> cat.drop_learnt(np.array([0])); bool(cat.has_vector[0]), bool(cat.learnt[0])
        (False, False)
        """
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[self._learnt[rows] & ~self._seed[rows]]
        self._vectors[rows] = 0.0
        self._has[rows] = False
        self._learnt[rows] = False
        self._epoch[rows] += 1

    def _grow(self, need: int) -> None:
        cap = len(self._has)
        if need <= cap:
            return
        new_cap = max(need, 2 * cap)
        vectors = np.zeros((new_cap, self.dim), dtype=np.float32)
        vectors[:cap] = self._vectors
        has = np.zeros(new_cap, dtype=bool)
        has[:cap] = self._has
        keys = np.zeros(new_cap, dtype=np.int64)
        keys[:cap] = self._keys
        epoch = np.zeros(new_cap, dtype=np.int64)
        epoch[:cap] = self._epoch
        learnt = np.zeros(new_cap, dtype=bool)
        learnt[:cap] = self._learnt
        seed = np.zeros(new_cap, dtype=bool)
        seed[:cap] = self._seed
        self._vectors, self._has, self._keys, self._epoch = vectors, has, keys, epoch
        self._learnt, self._seed = learnt, seed

    def _add(self, item_ids: list[str]) -> np.ndarray:
        """Rows for ids not in the catalogue yet (unique)."""
        start = len(self.ids)
        rows = np.arange(start, start + len(item_ids))
        self._grow(start + len(item_ids))
        self.ids.extend(item_ids)
        keys = np.fromiter(map(item_key, item_ids), dtype=np.int64, count=len(item_ids))
        self._keys[rows] = keys
        self._row.get_or_insert(np.fromiter(map(hash, item_ids), np.int64, len(item_ids)))
        self._key_row.get_or_insert(keys)
        return rows

    def rows_for(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n,) int64 rows of the given ids; ids never seen get a row without a vector."""
        rows = self._row.get(np.fromiter(map(hash, item_ids), np.int64, len(item_ids)))
        if (rows < 0).any():
            missing = np.flatnonzero(rows < 0)
            new_ids = list(dict.fromkeys(item_ids[i] for i in missing.tolist()))
            self._add(new_ids)
            rows[missing] = self._row.get(
                np.fromiter((hash(item_ids[i]) for i in missing.tolist()), np.int64, len(missing))
            )
        return rows

    def rows_for_keys(self, keys) -> np.ndarray:
        """(n,) int64 rows of stable keys, -1 for keys never seen."""
        return self._key_row.get(np.asarray(keys, dtype=np.int64))

    def id_of_key(self, key: int) -> str | None:
        """Item id for a stable key, or None."""
        row = int(self._key_row.get(np.array([key], dtype=np.int64))[0])
        return None if row < 0 else self.ids[row]

    def upsert(
        self,
        item_id: str,
        vector: Sequence[float] | np.ndarray | None = None,
        category: str | None = None,
        subcategory: str | None = None,
        tags: Sequence[str] | None = None,
        entities: Sequence[str] | None = None,
    ) -> None:
        """Set one item's vector: explicit (normalised) or derived from metadata.

        Raises ``ValueError`` for a vector of the wrong length, a zero or
        non-finite vector, or no metadata at all.
        """
        if vector is not None:
            v = np.asarray(vector, dtype=np.float64)
            if v.shape != (self.dim,):
                raise ValueError(f"vector has length {v.size}, expected {self.dim}")
            norm = float(np.linalg.norm(v))
            if not np.isfinite(norm) or norm == 0.0:
                raise ValueError("vector must be finite and non-zero")
            unit = (v / norm).astype(np.float32)
        else:
            unit = metadata_vector(self.dim, category, subcategory, tags, entities)
        row = int(self.rows_for([item_id])[0])
        self._vectors[row] = unit
        self._has[row] = True
        self._learnt[row] = self._seed[row] = False
        self.any_given = True
        self._epoch[row] += 1

    def upsert_many(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Set explicit vectors for many items: ``vectors`` is (n, dim), rows normalised here."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(item_ids), self.dim):
            raise ValueError(f"vectors must have shape ({len(item_ids)}, {self.dim})")
        rows = self.rows_for(item_ids)
        self._vectors[rows] = unit_rows(vectors)
        self._has[rows] = np.linalg.norm(vectors, axis=1) > 0
        self._learnt[rows] = self._seed[rows] = False
        self.any_given = self.any_given or bool(self._has[rows].any())
        self._epoch[rows] += 1

    def upsert_record(self, record: dict) -> None:
        """Apply one ``item`` topic record (see schemas/item.schema.json)."""
        self.upsert(
            record["item_id"],
            vector=record.get("vector"),
            category=record.get("category"),
            subcategory=record.get("subcategory"),
            tags=record.get("tags"),
            entities=record.get("entities"),
        )
