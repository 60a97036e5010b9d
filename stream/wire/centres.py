"""Centre-set records (``schemas/centres.schema.json``) on the compacted
centres topic: one partition, every record under the key :data:`CENTRES_KEY`,
the value a JSON object with the vectors as base64 little-endian float32.

>>> from stream.core.centres import CentreSet
>>> cs = CentreSet.create([[1, 0], [0, 1]], reason="bootstrap", created_at_ms=0)
>>> decode_centres(encode_centres(cs)) == cs
True
>>> centres_record(cs)["vectors"]
'AACAPwAAAAAAAAAAAACAPw=='
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import numpy as np
import orjson

from stream.core.centres import CentreSet

CENTRES_KEY = b"centres"


def centres_record(centres: CentreSet) -> dict:
    """The centres topic value as a JSON-ready dict (vectors: base64 float32 LE)."""
    return {
        "version": centres.version,
        "created_at": centres.created_at_ms,
        "reason": centres.reason,
        "dim": centres.dim,
        "ids": centres.ids.tolist(),
        "vectors": base64.b64encode(centres.vectors.astype("<f4").tobytes()).decode("ascii"),
        "sizes": centres.sizes.tolist(),
        "aliases": {str(k): v for k, v in sorted(centres.aliases.items())},
        "stats": dict(centres.stats),
    }


def centres_from_record(record: Mapping) -> CentreSet:
    """Inverse of :func:`centres_record`; raises ``ValueError`` on inconsistent fields."""
    k, dim = len(record["ids"]), int(record["dim"])
    raw = base64.b64decode(record["vectors"], validate=True)
    if len(raw) != 4 * k * dim:
        raise ValueError(f"vectors hold {len(raw)} bytes, expected {4 * k * dim}")
    vectors = np.frombuffer(raw, dtype="<f4").reshape(k, dim)
    return CentreSet(
        version=int(record["version"]),
        ids=np.asarray(record["ids"], dtype=np.int64),
        vectors=vectors,
        sizes=np.asarray(record["sizes"], dtype=np.int64),
        aliases={int(a): int(b) for a, b in record.get("aliases", {}).items()},
        reason=record["reason"],
        created_at_ms=int(record["created_at"]),
        stats=dict(record.get("stats") or {}),
    )


def encode_centres(centres: CentreSet) -> bytes:
    """The value of a centres record (compact UTF-8 JSON)."""
    return orjson.dumps(centres_record(centres), option=orjson.OPT_SERIALIZE_NUMPY)


def decode_centres(value: bytes) -> CentreSet:
    """Inverse of :func:`encode_centres`; raises ``ValueError``, ``KeyError`` or
    ``TypeError`` on a malformed value."""
    return centres_from_record(orjson.loads(value))
