"""The topic schemas in schemas/ and stream.wire.schemas."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from jsonschema import Draft202012Validator

from stream.errors import BadRecord
from stream.wire import schemas

NAMES = ["assignment", "centres", "cf-delta", "click", "cluster-candidates", "dlq", "item"]


def first_example(name: str) -> dict:
    return copy.deepcopy(schemas.load_schema(name)["examples"][0])


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def with_(record: dict, **fields) -> dict:
    return {**record, **fields}


def test_names_lists_every_schema_file():
    assert schemas.names() == NAMES
    assert sorted(p.name for p in schemas.schema_dir().glob("*.json")) == [
        f"{n}.schema.json" for n in NAMES
    ]


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12_with_header(name):
    schema = schemas.load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://clusterstream.dev/schemas/{name}.schema.json"
    assert schema["title"] and schema["description"]
    assert schema["type"] == "object"


def _properties(node):
    """Every (name, subschema) found under a "properties" keyword, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                yield from value.items()
            yield from _properties(value)
    elif isinstance(node, list):
        for value in node:
            yield from _properties(value)


@pytest.mark.parametrize("name", NAMES)
def test_every_property_has_a_description(name):
    props = list(_properties(schemas.load_schema(name)))
    assert props
    assert [p for p, sub in props if not sub.get("description")] == []


@pytest.mark.parametrize("name", NAMES)
def test_examples_validate(name):
    examples = schemas.load_schema(name)["examples"]
    assert len(examples) >= 2
    for example in examples:
        assert schemas.validate(name, example) is example


@pytest.mark.parametrize("example", schemas.load_schema("centres")["examples"])
def test_centres_examples_are_consistent(example):
    """What code checks beyond the schema holds for the examples too."""
    raw = base64.b64decode(example["vectors"], validate=True)
    assert len(raw) == 4 * len(example["ids"]) * example["dim"]
    assert len(example["sizes"]) == len(example["ids"])
    assert all(target in example["ids"] for target in example["aliases"].values())
    assert not set(map(int, example["aliases"])) & set(example["ids"])


def test_load_schema_returns_a_copy():
    schemas.load_schema("click")["title"] = "changed"
    assert schemas.load_schema("click")["title"] == "Click"


def test_unknown_schema_name():
    with pytest.raises(ValueError, match="unknown schema 'nope'"):
        schemas.load_schema("nope")


def test_validator_is_cached():
    assert schemas.validator("item") is schemas.validator("item")


def test_schema_dir_prefers_the_packaged_copy(tmp_path, monkeypatch):
    assert (schemas.schema_dir() / "click.schema.json").is_file()
    (tmp_path / "click.schema.json").write_text("{}")
    monkeypatch.setattr(schemas, "_PACKAGE_DIR", tmp_path)
    assert schemas.schema_dir() == tmp_path


def _counter_examples():
    click = first_example("click")
    item = first_example("item")
    meta_item = without(schemas.load_schema("item")["examples"][1], "title")
    assignment = first_example("assignment")
    centres = first_example("centres")
    delta = first_example("cf-delta")
    cands = schemas.load_schema("cluster-candidates")["examples"][1]
    dlq = first_example("dlq")
    cases = {
        "click": [
            without(click, "event_id"),
            without(click, "user_id"),
            without(click, "item_id"),
            without(click, "ts"),
            with_(click, event_id=""),
            with_(click, user_id=""),
            with_(click, user_id="u" * 257),
            with_(click, item_id=7),
            with_(click, ts=-1),
            with_(click, ts=253402300800000),
            with_(click, ts=1.5),
            with_(click, ts="1700000000000"),
            with_(click, ts=True),
            with_(click, weight=0),
            with_(click, weight=-0.5),
            with_(click, weight=True),
            with_(click, weight=None),
            with_(click, context=[]),
            with_(click, context="mobile"),
            [click],
        ],
        "item": [
            without(item, "item_id"),
            without(item, "ts"),
            without(item, "vector"),
            with_(item, vector=[]),
            with_(item, vector=["0.1"]),
            with_(item, vector="0.1,0.2"),
            with_(item, item_id=""),
            with_(item, ts=-5),
            {"item_id": "i", "ts": 1, "tags": []},
            {"item_id": "i", "ts": 1, "category": ""},
            {"item_id": "i", "ts": 1, "title": "only a title"},
            with_(meta_item, tags="a,b"),
            with_(meta_item, entities=[1, 2]),
            with_(meta_item, category=3),
        ],
        "assignment": [
            without(assignment, "previous"),
            without(assignment, "centres_version"),
            with_(assignment, memberships=[{"cluster_id": -1, "score": 0.5}]),
            with_(assignment, memberships=[{"cluster_id": 1}]),
            with_(assignment, memberships=[{"cluster_id": "1", "score": 0.5}]),
            with_(assignment, previous=None),
            with_(assignment, centres_version=-1),
            with_(assignment, user_id=""),
        ],
        "centres": [
            without(centres, "vectors"),
            without(centres, "aliases"),
            with_(centres, version=0),
            with_(centres, reason="rebalance"),
            with_(centres, dim=0),
            with_(centres, ids=[0, 0]),
            with_(centres, ids=[-1]),
            with_(centres, vectors=[[1.0, 0.0]]),
            with_(centres, vectors="not base64!"),
            with_(centres, sizes=[-1]),
            with_(centres, aliases={"x": 0}),
            with_(centres, aliases={"3": -1}),
            with_(centres, aliases={"3": "0"}),
            with_(centres, stats=[]),
        ],
        "cf-delta": [
            without(delta, "landmark"),
            without(delta, "source"),
            with_(delta, pairs=[["N1", "N2", 1.0]]),  # without pairs_landmark
            with_(delta, pairs=[["N1", "N2"]], pairs_landmark=0),
            with_(delta, pairs=[["N1", "N2", -1.0]], pairs_landmark=0),
            with_(delta, pairs={"a": ["N1"], "b": ["N2"]}, pairs_landmark=0),
            with_(delta, pairs={"a": ["N1"], "b": [""], "values": [1.0]}, pairs_landmark=0),
            with_(delta, pairs={"a": [], "b": [], "values": []}, pairs_landmark=0),
            with_(delta, pairs={"a": ["N1"], "b": ["N2"], "values": [-1]}, pairs_landmark=0),
            with_(
                delta, pairs={"a": ["N1"], "b": ["N2"], "values": [1], "c": []}, pairs_landmark=0
            ),
            with_(delta, items={"N1": "1.0"}),
            with_(delta, items={"N1": -1.0}),
            with_(delta, items={"": 1.0}),
            with_(delta, items=[["N1", 1.0]]),
            with_(delta, cluster_id=-2),
            with_(delta, ts_min=-1),
            with_(delta, source={"topic": "clicks", "partition": 0}),
            with_(delta, source={"topic": "clicks", "partition": -1, "first_offset": 0}),
            with_(delta, source={"topic": "", "partition": 0, "first_offset": 0}),
        ],
        "cluster-candidates": [
            without(cands, "items"),
            without(cands, "centres_version"),
            with_(cands, items=[{"item_id": "N1"}]),
            with_(cands, items=[{"item_id": "", "score": 1.0}]),
            with_(cands, items={"N1": 1.0}),
            with_(cands, cluster_id=1.5),
        ],
        "dlq": [
            without(dlq, "reason"),
            without(dlq, "raw"),
            with_(dlq, reason=""),
            with_(dlq, raw=None),
            with_(dlq, partition=-1),
            with_(dlq, offset="12"),
            with_(dlq, key=5),
            with_(dlq, ts=None),
        ],
    }
    return [(name, i, value) for name, values in cases.items() for i, value in enumerate(values)]


@pytest.mark.parametrize(("name", "case", "value"), _counter_examples())
def test_counter_examples_are_rejected(name, case, value):
    assert not schemas.validator(name).is_valid(value)
    with pytest.raises(BadRecord) as info:
        schemas.validate(name, value)
    reason = info.value.reason
    assert reason and "\n" not in reason and len(reason) <= 200


@pytest.mark.parametrize(
    ("name", "change", "reason"),
    [
        ("click", {"ts": "abc"}, "ts: 'abc' is not of type 'integer'"),
        ("click", {"weight": 0}, "weight: 0 is less than or equal to the minimum of 0"),
        ("click", {"context": None}, "context: None is not of type 'object'"),
        (
            "centres",
            {"reason": "x"},
            "reason: 'x' is not one of ['bootstrap', 'merge', 'recompute']",
        ),
        ("centres", {"vectors": [1.0]}, "vectors: [1.0] is not of type 'string'"),
        ("centres", {"aliases": {"x": 0}}, "aliases: 'x' does not match '^[0-9]+$'"),
        ("item", {"vector": ["x"]}, "vector[0]: 'x' is not of type 'number'"),
        ("assignment", {"previous": [{"score": 1.0}]}, "missing field: previous[0].cluster_id"),
        (
            "cf-delta",
            {"source": {"topic": "clicks", "partition": 0}},
            "missing field: source.first_offset",
        ),
    ],
)
def test_validate_reasons(name, change, reason):
    with pytest.raises(BadRecord) as info:
        schemas.validate(name, with_(first_example(name), **change))
    assert info.value.reason == reason
    assert str(info.value) == reason


def test_validate_reason_for_missing_fields():
    with pytest.raises(BadRecord, match=r"^missing field: user_id$"):
        schemas.validate("click", without(first_example("click"), "user_id"))
    with pytest.raises(BadRecord, match=r"^missing field: event_id$"):
        schemas.validate("click", {})


def test_validate_reason_for_item_without_vector_or_metadata():
    with pytest.raises(BadRecord) as info:
        schemas.validate("item", {"item_id": "N1", "ts": 0})
    assert info.value.reason == "needs one of: vector, category, subcategory, tags, entities"


def test_validate_reason_is_one_short_line():
    value = with_(first_example("click"), user_id="line\n" * 500)
    with pytest.raises(BadRecord) as info:
        schemas.validate("click", value)
    reason = info.value.reason
    assert reason.startswith("user_id: 'line\\nline")
    assert reason.endswith("is too long")
    assert "\n" not in reason and len(reason) <= 200


def test_schema_files_are_plain_json():
    for name in NAMES:
        text = (schemas.schema_dir() / f"{name}.schema.json").read_text(encoding="utf-8")
        assert json.loads(text) == schemas.load_schema(name)
