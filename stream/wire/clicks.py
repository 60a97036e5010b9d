"""Decode and validate a fetched batch of raw click values: the hot path's first step.

Values are UTF-8 JSON objects (``schemas/click.schema.json``). A batch of
plainly valid clicks (the usual case) is read in one typed ``msgspec`` decode
that checks types and bounds as it parses; any other batch is parsed value by
value with orjson and checked by hand instead of by ``jsonschema`` (much
cheaper; ``python tests/bench/bench_decode.py`` times both). The checks give exactly the verdict the schema gives, including its
corner cases: ``5.0`` is an integer, ``true``/``false`` are neither integers
nor numbers, string lengths count code points, extra fields are allowed and
ignored. Property tests hold the value-by-value path to the schema's verdict
and the whole-batch path to the value-by-value one.

Valid clicks come back as one :class:`~stream.core.clicks.ClickBatch` in
arrival order; rejected ones as ``(index_in_input, reason)`` pairs, for the
dead-letter topic.

>>> values = [
...     encode_click({"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1000}),
...     b'{"event_id": "e2", "user_id": "u2", "item_id": "i9", "ts": 2000.0, "weight": 3}',
...     b'{"event_id": "e3", "user_id": "u1", "item_id": "i1"}',
...     b"not json",
...     None,
... ]
>>> batch, rejected = decode_clicks(values)
>>> batch.user_ids, batch.ts.tolist(), batch.weights.tolist(), batch.event_ids
(['u1', 'u2'], [1000, 2000], [1.0, 3.0], ['e1', 'e2'])
>>> rejected
[(2, 'missing field: ts'), (3, 'invalid JSON'), (4, 'null value')]
"""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec
import numpy as np
import orjson

from stream.core.clicks import ClickBatch

TS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z in epoch ms, as in the schema
ID_MAX_LEN = 256

REQUIRED = ("event_id", "user_id", "item_id", "ts")
_COLUMNS = ("event_id", "user_id", "item_id", "ts", "weight")
_NO_CONTEXT: dict = {}  # stands in for an absent "context" on the fast path; never mutated


class JoinedValues(Protocol):
    """Fetched values that give themselves as the text of one JSON array
    (:class:`stream.io.fetched.FetchedRecords`, the batch loop's), so the
    values need no ``bytes`` object each; named here by shape only, as the
    wire formats sit below the Kafka plumbing."""

    def __len__(self) -> int: ...

    def values(self) -> list[bytes | None]: ...

    def joined(self) -> bytes | None: ...


def decode_clicks(
    values: list[bytes | None] | JoinedValues,
) -> tuple[ClickBatch, list[tuple[int, str]]]:
    """Decode raw Kafka values into a batch of valid clicks and a list of rejects.

    - ``values``: n raw values (``bytes``, or ``None`` for a null value), or
      fetched records (:class:`JoinedValues`, the batch loop's: their values
      are joined without a ``bytes`` object each)
    - returns ``(batch, rejected)``: ``batch`` holds the valid clicks in input
      order (``ts`` int64, ``weights`` float64, ``event_ids`` filled);
      ``rejected`` is ``[(index_in_values, reason), ...]`` in input order.

    Reasons are short and stable: ``"null value"``, ``"invalid UTF-8"``,
    ``"invalid JSON"``, ``"not an object"``, ``"missing field: ts"``,
    ``"user_id: must be a string"``, ``"user_id: must not be empty"``,
    ``"user_id: must be at most 256 characters"``, ``"ts: must be an integer"``,
    ``"ts: must be >= 0"``, ``"ts: must be <= 253402300799999"``,
    ``"weight: must be a number"``, ``"weight: must be > 0"``,
    ``"context: must be an object"``.
    """
    if not isinstance(values, list) and hasattr(values, "joined"):
        plain = _decode_text(values.joined(), len(values))
        if plain is not None:
            return plain, []
        values = values.values()
    plain = _decode_plain(values)
    if plain is not None:
        return plain, []
    loads = orjson.loads
    no_context = _NO_CONTEXT
    rows: list[tuple[str, str, str, int, float]] = []  # (event_id, user_id, item_id, ts, weight)
    add = rows.append
    rejected: list[tuple[int, str]] = []
    for i, raw in enumerate(values):
        # Fast path: the common, plainly valid click. Anything unusual (errors,
        # integral floats, bools, bounds) falls through to _check, which decides.
        try:
            rec = loads(raw)
            event_id = rec["event_id"]
            user_id = rec["user_id"]
            item_id = rec["item_id"]
            ts = rec["ts"]
            weight = rec.get("weight", 1.0)
            context = rec.get("context", no_context)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            pass
        else:
            if (
                type(event_id) is type(user_id) is type(item_id) is str
                and type(ts) is int
                and (type(weight) is float or type(weight) is int)
                and type(context) is dict
                and event_id
                and 0 < len(user_id) <= ID_MAX_LEN
                and 0 < len(item_id) <= ID_MAX_LEN
                and 0 <= ts <= TS_MAX
                and weight > 0
            ):
                add((event_id, user_id, item_id, ts, weight))
                continue
        # Slow path: rare, so it may parse the value again.
        verdict = _decode_one(raw)
        if isinstance(verdict, str):
            rejected.append((i, verdict))
        else:
            add(tuple(verdict[k] for k in _COLUMNS))
    columns = zip(*rows, strict=True) if rows else ((),) * len(_COLUMNS)
    event_ids, user_ids, item_ids, ts_col, weight_col = columns
    batch = ClickBatch(
        list(user_ids),
        list(item_ids),
        np.array(ts_col, dtype=np.int64),
        np.array(weight_col, dtype=np.float64),
        list(event_ids),
    )
    return batch, rejected


class _Click(msgspec.Struct, gc=False):
    """A plainly valid click as typed decoding reads it: the schema's types and
    bounds, where an integral float for ``ts`` (valid for the schema), a
    ``null`` context or anything unusual is an error (the caller then decides
    value by value). Extra fields are skipped; a repeated field takes its
    last value, as in orjson."""

    event_id: Annotated[str, msgspec.Meta(min_length=1)]
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LEN)]
    item_id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LEN)]
    ts: Annotated[int, msgspec.Meta(ge=0, le=TS_MAX)]
    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    context: dict | msgspec.UnsetType = msgspec.UNSET


_BATCH_DECODER = msgspec.json.Decoder(list[_Click])


def _decode_text(text, n: int) -> ClickBatch | None:
    """The whole batch at once when every value is a plainly valid click (the
    usual case); None if any value is not (the caller then decides value by
    value). ``text``: the ``n`` values as one JSON array (:func:`_joined`), or
    None when they could not be joined. Plain means what the per-value fast
    path of :func:`decode_clicks` accepts: fields of exactly the schema's
    types, no integral floats, bounds met. The text is read by one typed
    ``msgspec`` decode into :class:`_Click` records that checks types and
    bounds as it parses, cheaper than orjson plus checks in Python
    (``python tests/bench/bench_decode.py``). A batch holding one doubtful
    value pays for a wasted try."""
    if text is None:
        return None
    try:
        clicks = _BATCH_DECODER.decode(text)
    except (ValueError, RecursionError):  # msgspec's DecodeError, invalid UTF-8, deep nesting
        return None
    if len(clicks) != n:  # cannot happen after _joined's checks; kept as a guard
        return None
    return ClickBatch(
        [c.user_id for c in clicks],
        [c.item_id for c in clicks],
        np.fromiter((c.ts for c in clicks), dtype=np.int64, count=len(clicks)),
        np.fromiter((c.weight for c in clicks), dtype=np.float64, count=len(clicks)),
        [c.event_id for c in clicks],
    )


def _decode_plain(values: list[bytes | None]) -> ClickBatch | None:
    """:func:`_decode_text` of the values joined by :func:`_joined`."""
    return _decode_text(_joined(values), len(values))


def _joined(values: list[bytes | None]) -> bytes | None:
    """The values as the text of ONE JSON array (one parse instead of one per
    value), or None when that text cannot be trusted to split exactly as the
    values do.

    The values are joined with ``",\n"``. When every value starts with ``{``
    and none holds ``[``, each join is a separator of the outer array: inside
    a string its raw newline is a parse error, inside an object the ``{``
    after its comma is one (an object wants a key there), and with no ``[``
    there is no array around it. So n elements mean each value was exactly
    one of them. Other values (leading spaces, arrays in ``context``, invalid
    ones) go value by value.

    >>> _joined([b'{"a":1}', b'{"b":[2]}']) is None, _joined([b'{"a":1}', b'{"b":2}']).split()
    (True, [b'[{"a":1},', b'{"b":2}]'])
    >>> _BATCH_DECODER.decode(_joined([b'{"a":{"x":1', b'{"y":2}}']))  # would be one object
    Traceback (most recent call last):
    msgspec.DecodeError: JSON is malformed: expected '"' (byte 14)
    """
    try:
        text = b"[" + b",\n".join(values) + b"]"
    except TypeError:  # a None among them
        return None
    n = len(values)
    if n == 0 or text.find(b"[", 1) >= 0:
        return None
    # where each value starts in text: after "[" and the values and joins before it
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    starts = np.arange(1, 1 + 2 * n, 2, dtype=np.int64)
    starts[1:] += np.cumsum(lengths[:-1])
    if not (np.frombuffer(text, dtype=np.uint8)[starts] == ord("{")).all():
        return None
    return text


def decode_click_records(values: list[bytes | None]) -> tuple[list[dict], list[tuple[int, str]]]:
    """Like :func:`decode_clicks`, but the valid clicks come back as dicts.

    Each dict is the parsed record with ``ts`` as ``int`` and ``weight`` as
    ``float`` (1.0 when absent); extra fields are kept. Slower than
    :func:`decode_clicks`; meant for tests, tools and replays.

    >>> decode_click_records([b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": 5.0}'])
    ([{'event_id': 'e', 'user_id': 'u', 'item_id': 'i', 'ts': 5, 'weight': 1.0}], [])
    """
    records: list[dict] = []
    rejected: list[tuple[int, str]] = []
    for i, raw in enumerate(values):
        verdict = _decode_one(raw)
        if isinstance(verdict, str):
            rejected.append((i, verdict))
        else:
            records.append(verdict)
    return records, rejected


def encode_click(record: dict) -> bytes:
    """Serialise a click for producing (compact UTF-8 JSON, via orjson).

    The record is not validated; producers are expected to follow the schema.

    >>> encode_click({"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1000})
    b'{"event_id":"e1","user_id":"u1","item_id":"i1","ts":1000}'
    """
    return orjson.dumps(record)


def _decode_one(raw: bytes | None) -> dict | str:
    """Parse and check one value: the normalised record, or the reason it is rejected."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if raw is None:
            return "null value"
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return "invalid UTF-8"
        return "invalid JSON"
    return _check(rec)


def _check(rec: object) -> dict | str:
    """Check a parsed value against the click schema, in a fixed order.

    Returns ``rec`` with ``ts`` made an ``int`` and ``weight`` a ``float``
    (set to 1.0 when absent), or the reason for the first problem found.
    """
    if type(rec) is not dict:
        return "not an object"
    for name in REQUIRED:
        if name not in rec:
            return f"missing field: {name}"
    for name, max_len in (("event_id", None), ("user_id", ID_MAX_LEN), ("item_id", ID_MAX_LEN)):
        value = rec[name]
        if type(value) is not str:
            return f"{name}: must be a string"
        if not value:
            return f"{name}: must not be empty"
        if max_len is not None and len(value) > max_len:
            return f"{name}: must be at most {max_len} characters"
    ts = rec["ts"]
    if type(ts) is float and ts.is_integer():  # JSON Schema: 5.0 is an integer
        ts = int(ts)
    if type(ts) is not int:
        return "ts: must be an integer"
    if ts < 0:
        return "ts: must be >= 0"
    if ts > TS_MAX:
        return f"ts: must be <= {TS_MAX}"
    weight = rec.get("weight", 1.0)
    if type(weight) is not float and type(weight) is not int:  # bool is not a number
        return "weight: must be a number"
    if not weight > 0:
        return "weight: must be > 0"
    if "context" in rec and type(rec["context"]) is not dict:
        return "context: must be an object"
    return {**rec, "ts": ts, "weight": float(weight)}
