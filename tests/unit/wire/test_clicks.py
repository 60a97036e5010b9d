"""The hot-path click decoder: same verdict as schemas/click.schema.json, exact reasons."""

from __future__ import annotations

import json
import re

import numpy as np
import orjson
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from stream.core.clicks import ClickBatch
from stream.wire import schemas
from stream.wire.clicks import (
    ID_MAX_LEN,
    TS_MAX,
    _decode_plain,
    decode_click_records,
    decode_clicks,
    encode_click,
)

CLICK = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000_000}
_DROP = object()  # click(field=_DROP) leaves the field out


def click(**changes) -> dict:
    record = {**CLICK, **changes}
    return {k: v for k, v in record.items() if v is not _DROP}


def raw(record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def test_constants_match_the_schema():
    props = schemas.load_schema("click")["properties"]
    assert props["ts"]["maximum"] == TS_MAX
    assert props["user_id"]["maxLength"] == props["item_id"]["maxLength"] == ID_MAX_LEN
    assert schemas.load_schema("click")["required"] == ["event_id", "user_id", "item_id", "ts"]


def test_decode_valid_batch():
    values = [
        encode_click(click()),
        encode_click(click(event_id="e2", user_id="u2", item_id="i2", ts=5, weight=2.5)),
        encode_click(click(event_id="e3", ts=7.0, weight=3, context={"page": "home"}, extra=[1])),
    ]
    batch, rejected = decode_clicks(values)
    assert rejected == []
    assert isinstance(batch, ClickBatch) and len(batch) == 3
    assert batch.user_ids == ["u1", "u2", "u1"]
    assert batch.item_ids == ["i1", "i2", "i1"]
    assert batch.event_ids == ["e1", "e2", "e3"]
    assert batch.ts.dtype == np.int64 and batch.ts.tolist() == [1_700_000_000_000, 5, 7]
    assert batch.weights.dtype == np.float64 and batch.weights.tolist() == [1.0, 2.5, 3.0]


def test_decode_empty_batch():
    batch, rejected = decode_clicks([])
    assert len(batch) == 0 and rejected == []
    assert batch.ts.shape == (0,) and batch.ts.dtype == np.int64
    assert batch.weights.shape == (0,) and batch.weights.dtype == np.float64
    assert batch.event_ids == []


INVALID = [
    (None, "null value"),
    (b"", "invalid JSON"),
    (b"{", "invalid JSON"),
    (b'{"event_id": "e1",}', "invalid JSON"),
    (b"NaN", "invalid JSON"),
    (b'{"ts": 1e400}', "invalid JSON"),
    (b'"\\ud800"', "invalid JSON"),
    (b"\xef\xbb\xbf{}", "invalid JSON"),
    (b'{"user_id": "\xff"}', "invalid UTF-8"),
    (b"\xed\xa0\x80", "invalid UTF-8"),
    (b"null", "not an object"),
    (b"[1, 2]", "not an object"),
    (b'"click"', "not an object"),
    (b"17", "not an object"),
    (raw(click(event_id=_DROP)), "missing field: event_id"),
    (raw(click(user_id=_DROP)), "missing field: user_id"),
    (raw(click(item_id=_DROP)), "missing field: item_id"),
    (raw(click(ts=_DROP)), "missing field: ts"),
    (raw({}), "missing field: event_id"),
    (raw(click(event_id=1)), "event_id: must be a string"),
    (raw(click(event_id="")), "event_id: must not be empty"),
    (raw(click(user_id=None)), "user_id: must be a string"),
    (raw(click(user_id=42)), "user_id: must be a string"),
    (raw(click(user_id="")), "user_id: must not be empty"),
    (raw(click(user_id="u" * 257)), "user_id: must be at most 256 characters"),
    (raw(click(item_id=["i1"])), "item_id: must be a string"),
    (raw(click(item_id="\U0001f600" * 257)), "item_id: must be at most 256 characters"),
    (raw(click(ts="1700000000000")), "ts: must be an integer"),
    (raw(click(ts=1.5)), "ts: must be an integer"),
    (raw(click(ts=True)), "ts: must be an integer"),
    (raw(click(ts=None)), "ts: must be an integer"),
    (raw(click(ts=-1)), "ts: must be >= 0"),
    (raw(click(ts=-1.0)), "ts: must be >= 0"),
    (raw(click(ts=TS_MAX + 1)), "ts: must be <= 253402300799999"),
    (raw(click(ts=2**64 - 1)), "ts: must be <= 253402300799999"),
    (raw(click(ts=10**30)), "ts: must be <= 253402300799999"),
    (raw(click(weight="1")), "weight: must be a number"),
    (raw(click(weight=None)), "weight: must be a number"),
    (raw(click(weight=True)), "weight: must be a number"),
    (raw(click(weight=0)), "weight: must be > 0"),
    (raw(click(weight=0.0)), "weight: must be > 0"),
    (raw(click(weight=-0.0)), "weight: must be > 0"),
    (raw(click(weight=-2)), "weight: must be > 0"),
    (raw(click(context=None)), "context: must be an object"),
    (raw(click(context=[])), "context: must be an object"),
    (raw(click(context="web")), "context: must be an object"),
]


@pytest.mark.parametrize(("value", "reason"), INVALID)
def test_invalid_value_reason_and_index(value, reason):
    good = encode_click(CLICK)
    batch, rejected = decode_clicks([good, value, good])
    assert rejected == [(1, reason)]
    assert len(batch) == 2
    records, rejected = decode_click_records([value])
    assert records == [] and rejected == [(0, reason)]


@pytest.mark.parametrize(("value", "reason"), INVALID)
def test_invalid_values_are_invalid_for_jsonschema_too(value, reason):
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return
    assert not schemas.validator("click").is_valid(parsed), reason


def test_mixed_batch_keeps_order_and_indices():
    values = [
        b"oops",
        encode_click(click(event_id="a", ts=1)),
        None,
        encode_click(click(event_id="b", ts=2, weight=0)),
        encode_click(click(event_id="c", ts=3.0)),
        encode_click(click(event_id="d", ts=4)),
    ]
    batch, rejected = decode_clicks(values)
    assert rejected == [(0, "invalid JSON"), (2, "null value"), (3, "weight: must be > 0")]
    assert batch.event_ids == ["a", "c", "d"]
    assert batch.ts.tolist() == [1, 3, 4]


ACCEPTED = [
    ({"ts": 0}, 0, 1.0),
    ({"ts": -0.0}, 0, 1.0),
    ({"ts": 5.0}, 5, 1.0),
    ({"ts": 1.7e12}, 1_700_000_000_000, 1.0),
    ({"ts": TS_MAX}, TS_MAX, 1.0),
    ({"ts": float(TS_MAX - 1)}, TS_MAX - 1, 1.0),
    ({"weight": 1}, CLICK["ts"], 1.0),
    ({"weight": 5e-324}, CLICK["ts"], 5e-324),
    ({"weight": 2**64 - 1}, CLICK["ts"], float(2**64 - 1)),
    ({"weight": 10**30}, CLICK["ts"], 1e30),
    ({"context": {}}, CLICK["ts"], 1.0),
    ({"user_id": "u" * 256, "item_id": "\U0001f600" * 256}, CLICK["ts"], 1.0),
    ({"user_id": "\x00", "item_id": " "}, CLICK["ts"], 1.0),
    ({"extra": None, "Weight": 0, "CONTEXT": 1}, CLICK["ts"], 1.0),
]


@pytest.mark.parametrize(("changes", "ts", "weight"), ACCEPTED)
def test_edge_cases_accepted_like_the_schema(changes, ts, weight):
    record = click(**changes)
    assert schemas.validator("click").is_valid(orjson.loads(raw(record)))
    batch, rejected = decode_clicks([raw(record)])
    assert rejected == []
    assert batch.user_ids == [record["user_id"]] and batch.item_ids == [record["item_id"]]
    assert batch.ts.tolist() == [ts] and batch.weights.tolist() == [weight]


def test_duplicate_keys_last_one_wins():
    value = b'{"event_id":"e","user_id":"u","item_id":"i","ts":"x","ts":5}'
    batch, rejected = decode_clicks([value])
    assert rejected == [] and batch.ts.tolist() == [5]


def test_accepts_bytearray_and_memoryview():
    value = encode_click(CLICK)
    batch, rejected = decode_clicks([bytearray(value), memoryview(value)])
    assert rejected == [] and len(batch) == 2


def test_decode_click_records_normalises_and_keeps_extras():
    values = [raw(click(ts=5.0, weight=2, context={"a": 1}, extra="x")), b"[]"]
    records, rejected = decode_click_records(values)
    assert rejected == [(1, "not an object")]
    assert records == [click(ts=5, weight=2.0, context={"a": 1}, extra="x")]
    assert type(records[0]["ts"]) is int and type(records[0]["weight"]) is float


def test_encode_click_round_trips():
    record = click(weight=0.5, context={"device": "tv", "ids": [1, 2]}, title="é")
    assert orjson.loads(encode_click(record)) == record
    batch, _ = decode_clicks([encode_click(record)])
    assert batch.weights.tolist() == [0.5]


# --- property test: the decoder and jsonschema agree on every value -------------------------

REASON = re.compile(
    r"null value|invalid UTF-8|invalid JSON|not an object"
    r"|missing field: (event_id|user_id|item_id|ts)"
    r"|(event_id|user_id|item_id): must (be a string|not be empty|be at most 256 characters)"
    r"|ts: must (be an integer|be >= 0|be <= 253402300799999)"
    r"|weight: must (be a number|be > 0)"
    r"|context: must be an object"
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(),  # beyond 64 bits: orjson reads these as floats
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
anything = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=2) | st.dictionaries(st.text(max_size=3), kids, max_size=2)
    ),
    max_leaves=4,
)


def repeated(lengths):
    """Strings of one repeated character (any code point) with a length from ``lengths``."""
    return st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.sampled_from(lengths))


# Per field: values the schema accepts, and values near or far from that.
FIELDS = {
    "id": (
        st.text(min_size=1, max_size=3) | repeated([1, 255, 256]),
        repeated([0, 257]) | anything,
    ),
    "ts": (
        st.integers(min_value=0, max_value=TS_MAX)
        | st.sampled_from([0.0, -0.0, 5.0, float(TS_MAX)]),
        st.sampled_from([-1, TS_MAX + 1, -1.0, 1e300, float(TS_MAX + 1), 2**64 - 1, True, "5"])
        | st.floats(min_value=-1e15, max_value=1e15).filter(lambda x: not x.is_integer())
        | anything,
    ),
    "weight": (
        st.floats(min_value=0, exclude_min=True, allow_infinity=False)
        | st.integers(min_value=1, max_value=2**64 - 1),
        st.sampled_from([0, 0.0, -0.0, -1, True, False, "1"]) | anything,
    ),
    "context": (st.dictionaries(st.text(max_size=3), anything, max_size=2), anything),
}


KINDS = {
    "event_id": "id",
    "user_id": "id",
    "item_id": "id",
    "ts": "ts",
    "weight": "weight",
    "context": "context",
}


@st.composite
def click_like(draw):
    """A valid click, or one a single mutation away from valid (most of the time)."""
    names = list(KINDS)
    target = draw(st.integers(0, 9))  # 0-5: doubtful value for that field, 6: drop one, 7-9: none
    record = {}
    for i, name in enumerate(names):
        valid, doubtful = FIELDS[KINDS[name]]
        if i == target:
            record[name] = draw(doubtful)
        elif i < 4 or draw(st.booleans()):  # weight and context are optional
            record[name] = draw(valid)
    if target == 6:
        del record[draw(st.sampled_from(names[:4]))]
    record.update(draw(st.dictionaries(st.text(max_size=3), scalars, max_size=1)))
    return record


def to_bytes(value, ensure_ascii: bool) -> bytes:
    # The stdlib encoder, not orjson: it can write integers beyond 64 bits.
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8")


@st.composite
def raw_values(draw):
    """Mostly encoded click-like dicts; sometimes other JSON, None or random bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=8))
    value = draw(anything if kind == 2 else click_like())
    return to_bytes(value, ensure_ascii=draw(st.booleans()))


def schema_accepts(value) -> bool:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return schemas.validator("click").is_valid(parsed)


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_values(), max_size=8))
@example([value for value, _ in INVALID] + [raw(click(**changes)) for changes, _, _ in ACCEPTED])
def test_decoder_agrees_with_jsonschema(values):
    batch, rejected = decode_clicks(values)
    expected = [i for i, v in enumerate(values) if schema_accepts(v)]
    rejected_at = [i for i, _ in rejected]
    assert sorted(set(range(len(values))) - set(rejected_at)) == expected
    assert rejected_at == sorted(rejected_at)
    assert len(batch) + len(rejected) == len(values)
    for _, reason in rejected:
        assert REASON.fullmatch(reason), reason
    event("clicks accepted in the batch: " + ("3+" if len(expected) >= 3 else str(len(expected))))

    accepted = [orjson.loads(values[i]) for i in expected]
    assert batch.event_ids == [r["event_id"] for r in accepted]
    assert batch.user_ids == [r["user_id"] for r in accepted]
    assert batch.item_ids == [r["item_id"] for r in accepted]
    assert batch.ts.tolist() == [int(r["ts"]) for r in accepted]
    assert batch.weights.tolist() == [float(r.get("weight", 1.0)) for r in accepted]


# --- the whole-batch path: taken for plain batches, same result as value by value -----------


valid_click = st.fixed_dictionaries(
    {name: FIELDS[KINDS[name]][0] for name in ("event_id", "user_id", "item_id", "ts")},
    optional={name: FIELDS[KINDS[name]][0] for name in ("weight", "context")},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_click | valid_click | click_like(), min_size=1, max_size=6), st.booleans())
def test_whole_batch_path_agrees_with_the_value_by_value_path(records, ensure_ascii):
    values = [to_bytes(r, ensure_ascii) for r in records]
    plain = _decode_plain(values)
    one_by_one, rejected = decode_click_records(values)
    event("whole batch" if plain is not None else "value by value")
    if plain is None:
        return
    assert rejected == []  # the whole-batch path never accepts what a value check rejects
    assert plain.event_ids == [r["event_id"] for r in one_by_one]
    assert plain.user_ids == [r["user_id"] for r in one_by_one]
    assert plain.item_ids == [r["item_id"] for r in one_by_one]
    assert plain.ts.dtype == np.int64 and plain.ts.tolist() == [r["ts"] for r in one_by_one]
    assert plain.weights.dtype == np.float64
    assert plain.weights.tolist() == [r["weight"] for r in one_by_one]


def test_a_batch_of_ordinary_clicks_takes_the_whole_batch_path():
    values = [
        encode_click(click(event_id=f"e{i}", user_id=f"u{i % 3}", ts=i, weight=1 + i % 2))
        for i in range(50)
    ] + [encode_click(click(event_id="ctx", context={"page": "home"}))]
    plain = _decode_plain(values)
    assert plain is not None and len(plain) == 51
    assert plain.weights.tolist()[:3] == [1.0, 2.0, 1.0]
    # one doubtful value anywhere sends the whole batch value by value
    for doubtful in (None, b"[]", encode_click(click(ts=5.0)), encode_click(click(weight=True))):
        assert _decode_plain(values[:10] + [doubtful] + values[10:]) is None
    batch, rejected = decode_clicks(values[:10] + [encode_click(click(ts=5.0))] + values[10:])
    assert rejected == [] and len(batch) == 52 and batch.ts[10] == 5


def _same_as_value_by_value(values):
    batch, rejected = decode_clicks(values)
    records, expected = decode_click_records(values)
    assert rejected == expected
    assert batch.event_ids == [r["event_id"] for r in records]
    assert batch.ts.tolist() == [r["ts"] for r in records]


def test_values_that_are_clicks_only_when_joined_are_rejected():
    # the whole-batch path parses the values joined into one array: pieces that
    # would join into valid clicks must still be rejected one by one
    head = b'{"event_id":"e","user_id":"u","item_id":"i","ts":1,"context":{"k":"'
    one = b'{"event_id":"e%d","user_id":"u","item_id":"i","ts":%d}'
    two = (one % (2, 2)) + b"," + (one % (3, 3))  # two clicks in one value
    for values in (
        [head, b'"}}', two],  # a string across a join
        [head + b"}", b'{"}}', two],  # the same, each piece starting with "{"
        [head[:-1] + b"1", b'"b":2}}', two],  # an object across a join
        [head[:-1] + b'[{"a":1}', b'{"b":2}]}}', two],  # an array across a join
    ):
        _same_as_value_by_value(values)
        assert len(decode_clicks(values)[0]) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_click, min_size=1, max_size=5), st.booleans(), st.data())
def test_any_cut_of_joined_clicks_decodes_as_value_by_value(records, ensure_ascii, data):
    text = b",\n".join(to_bytes(r, ensure_ascii) for r in records)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=len(records) + 1)))
    values = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    _same_as_value_by_value(values)


def test_typed_decoding_corner_cases_give_the_value_by_value_verdicts():
    # where msgspec's reading could differ from orjson's (escapes, number range,
    # repeated fields, nesting), the batch must come out as value by value
    ok = b'{"event_id":"e","user_id":"u","item_id":"i","ts":1'
    corner = [
        ok + b',"ts":2}',  # a repeated field: the last one
        ok + b',"weight":1,"weight":true}',
        b'{"event_id":"e","user_id":"\\ud800","item_id":"i","ts":1}',  # a lone surrogate
        ok + b',"weight":1e400}',
        ok + b',"context":{"a":1e400}}',
        ok + b',"weight":18446744073709551615}',
        ok + b',"context":null}',
        ok + b',"context":' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
        ok + b',"weight":1E2}',
    ]
    for value in corner:
        _same_as_value_by_value([encode_click(click(event_id="x")), value])
        batch, rejected = decode_clicks([value, value])
        records, expected = decode_click_records([value, value])
        assert rejected == expected and batch.weights.tolist() == [r["weight"] for r in records]
        assert batch.user_ids == [r["user_id"] for r in records]


def test_encoded_clicks_are_pinned():
    record = {"event_id": "e1", "user_id": "ü", "item_id": "i1", "ts": 1000, "weight": 2.5,
              "context": {"page": "home"}}  # fmt: skip
    value = encode_click(record)
    # the bytes written before the format moved to stream.wire
    assert value == (
        b'{"event_id":"e1","user_id":"\xc3\xbc","item_id":"i1","ts":1000,"weight":2.5,'
        b'"context":{"page":"home"}}'
    )
    assert decode_click_records([value]) == ([record], [])
