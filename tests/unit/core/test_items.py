"""Item vectors from metadata (deterministic everywhere) and the item catalogue."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.items import ItemCatalog, item_key, metadata_vector, unit_rows

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_ é", min_size=1, max_size=12)
METADATA = [
    {"category": "sport", "tags": ["tennis", "wimbledon"]},
    {"category": "news", "subcategory": "politics", "entities": ["EU", "Brussels"]},
    {"tags": ["a"]},
    {"category": "Éte", "subcategory": "plage", "tags": ["soleil", "été"], "entities": ["Nice"]},
]


def _vectors_in_subprocess(dim: int, hashseed: str) -> list[str]:
    """Hex bytes of metadata_vector for METADATA, computed in a fresh interpreter."""
    code = (
        "import json, sys\n"
        "from stream.core.items import metadata_vector, item_key\n"
        "meta = json.loads(sys.argv[1])\n"
        "out = [metadata_vector(int(sys.argv[2]), **m).tobytes().hex() for m in meta]\n"
        "out.append(str(item_key('item-\u00e9-1')))\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(METADATA), str(dim)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(proc.stdout)


def test_metadata_vector_is_identical_across_processes_and_hash_seeds():
    here = [metadata_vector(32, **m).tobytes().hex() for m in METADATA]
    here.append(str(item_key("item-\u00e9-1")))
    # Two other interpreters with different salts for Python's str hash.
    assert _vectors_in_subprocess(32, "1") == here
    assert _vectors_in_subprocess(32, "987654") == here


@settings(max_examples=100, deadline=None)
@given(
    dim=st.integers(1, 96),
    category=st.none() | WORDS,
    subcategory=st.none() | WORDS,
    tags=st.lists(WORDS, max_size=5),
    entities=st.lists(WORDS, max_size=3),
)
def test_metadata_vector_is_unit_float32_and_deterministic(
    dim, category, subcategory, tags, entities
):
    kwargs = dict(category=category, subcategory=subcategory, tags=tags, entities=entities)
    has_token = any(str(v).strip() for v in [category or "", subcategory or "", *tags, *entities])
    if not has_token:
        with pytest.raises(ValueError):
            metadata_vector(dim, **kwargs)
        return
    v = metadata_vector(dim, **kwargs)
    assert v.dtype == np.float32
    assert v.shape == (dim,)
    assert np.all(np.isfinite(v))
    assert abs(float(np.linalg.norm(v.astype(np.float64))) - 1.0) < 1e-6
    again = metadata_vector(dim, **kwargs)
    assert again.tobytes() == v.tobytes()


def test_metadata_tokens_are_case_and_space_insensitive():
    a = metadata_vector(16, category="Sport", tags=[" Tennis "])
    b = metadata_vector(16, category="sport", tags=["tennis"])
    assert a.tobytes() == b.tobytes()


def test_metadata_vector_depends_on_the_field_of_a_token():
    # "x" as a category and "x" as a tag are different tokens ("category:x" vs "tags:x").
    assert not np.array_equal(metadata_vector(64, category="x"), metadata_vector(64, tags=["x"]))


def test_metadata_vector_without_tokens_raises():
    with pytest.raises(ValueError):
        metadata_vector(8)
    with pytest.raises(ValueError):
        metadata_vector(8, category="  ", tags=["", " "])


def test_shared_category_is_closer_than_disjoint_metadata_on_average():
    rng = np.random.default_rng(7)
    same, disjoint = [], []
    for i in range(60):
        tags_a = [f"t{i}-{j}-a" for j in range(rng.integers(1, 4))]
        tags_b = [f"t{i}-{j}-b" for j in range(rng.integers(1, 4))]
        a = metadata_vector(64, category=f"cat{i}", tags=tags_a)
        b = metadata_vector(64, category=f"cat{i}", tags=tags_b)
        c = metadata_vector(64, category=f"other{i}", tags=[f"z{i}-{j}" for j in range(3)])
        same.append(float(a @ b))
        disjoint.append(float(a @ c))
    # Category weight 3 vs tag weight 1: sharing it gives a cosine of roughly
    # 9 / (9 + n_tags) ~ 0.8; disjoint tokens only meet through hash collisions (~0).
    assert np.mean(same) > np.mean(disjoint) + 0.4
    assert np.mean(same) > 0.5
    assert abs(np.mean(disjoint)) < 0.2


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_item_key_is_stable_non_negative_63_bit(item_id):
    key = item_key(item_id)
    assert isinstance(key, int)
    assert 0 <= key < 2**63
    assert key == item_key(str(item_id))
    # Independent derivation of the documented rule: BLAKE2b-64, little endian, top bit dropped.
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    assert key == int.from_bytes(digest, "little") >> 1


def test_unit_rows_keeps_zero_rows_and_normalises_others():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = unit_rows(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], atol=1e-7)


# -- ItemCatalog -----------------------------------------------------------------------


def test_unknown_ids_get_rows_without_vectors():
    cat = ItemCatalog(dim=4)
    cat.upsert("known", vector=[0, 2, 0, 0])
    rows = cat.rows_for(["new-1", "known", "new-2"])
    assert len(cat) == 3
    assert cat.has_vector[rows].tolist() == [False, True, False]
    assert not cat.vectors[rows[[0, 2]]].any()
    np.testing.assert_array_equal(cat.vectors[rows[1]], [0, 1, 0, 0])
    assert cat.n_with_vector == 1
    assert [cat.ids[r] for r in rows.tolist()] == ["new-1", "known", "new-2"]


@pytest.mark.parametrize(
    "vector",
    [
        [1.0, 0.0, 0.0],  # too short
        [1.0, 0.0, 0.0, 0.0, 0.0],  # too long
        [[1.0, 0.0, 0.0, 0.0]],  # wrong rank
        [0.0, 0.0, 0.0, 0.0],  # zero
        [float("nan"), 1.0, 0.0, 0.0],
        [float("inf"), 1.0, 0.0, 0.0],
    ],
)
def test_upsert_rejects_bad_vectors_without_side_effects(vector):
    cat = ItemCatalog(dim=4)
    with pytest.raises(ValueError):
        cat.upsert("bad", vector=vector)
    assert len(cat) == 0
    assert cat.id_of_key(item_key("bad")) is None


def test_upsert_without_vector_or_metadata_raises():
    cat = ItemCatalog(dim=4)
    with pytest.raises(ValueError):
        cat.upsert("nothing")


def test_upsert_normalises_and_overwrites():
    cat = ItemCatalog(dim=2)
    cat.upsert("a", vector=[3, 4])
    cat.upsert("a", vector=[0, -5])
    assert len(cat) == 1
    np.testing.assert_allclose(cat.vectors[0], [0, -1])


def test_upsert_record_with_metadata_and_with_vector():
    cat = ItemCatalog(dim=16)
    cat.upsert_record(
        {"item_id": "m1", "ts": 1, "category": "sport", "subcategory": "ski", "tags": ["alps"]}
    )
    cat.upsert_record({"item_id": "v1", "ts": 1, "vector": [2.0] + [0.0] * 15})
    rows = cat.rows_for(["m1", "v1"])
    assert cat.has_vector[rows].all()
    expected = metadata_vector(16, category="sport", subcategory="ski", tags=["alps"])
    assert cat.vectors[rows[0]].tobytes() == expected.tobytes()
    np.testing.assert_array_equal(cat.vectors[rows[1]], [1.0] + [0.0] * 15)


def test_rows_for_with_duplicates_in_one_call():
    cat = ItemCatalog(dim=2)
    ids = ["b", "a", "b", "c", "a", "b"]
    rows = cat.rows_for(ids)
    assert len(cat) == 3
    assert rows[0] == rows[2] == rows[5]
    assert rows[1] == rows[4]
    assert len({rows[0], rows[1], rows[3]}) == 3
    assert [cat.ids[r] for r in rows.tolist()] == ids
    # New rows are dense and in order of first appearance.
    assert sorted(set(rows.tolist())) == [0, 1, 2]
    assert cat.ids == ["b", "a", "c"]
    np.testing.assert_array_equal(cat.rows_for(ids), rows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(max_size=6), max_size=20), max_size=8))
def test_rows_for_agrees_with_a_dict_model(calls):
    cat = ItemCatalog(dim=3, capacity=2)  # tiny capacity: exercises growth
    model: dict[str, int] = {}
    for ids in calls:
        rows = cat.rows_for(ids)
        for item_id, row in zip(ids, rows.tolist(), strict=True):
            model.setdefault(item_id, len(model))
            assert row == model[item_id]
    assert cat.ids == list(model)
    assert len(cat) == len(model)
    assert cat.keys.tolist() == [item_key(i) for i in model]
    assert not cat.has_vector.any()


def test_keys_and_id_of_key():
    cat = ItemCatalog(dim=2, capacity=1)
    ids = [f"item-{i}" for i in range(50)]
    cat.upsert_many(ids, np.ones((50, 2)))
    for item_id in ids:
        assert cat.id_of_key(item_key(item_id)) == item_id
    assert cat.id_of_key(item_key("never-seen")) is None
    keys = [item_key(i) for i in ids]
    np.testing.assert_array_equal(cat.keys, keys)
    np.testing.assert_array_equal(cat.rows_for_keys(keys + [item_key("x")]), list(range(50)) + [-1])


def test_upsert_many_normalises_and_flags_zero_rows():
    cat = ItemCatalog(dim=2)
    cat.upsert_many(["a", "b", "c"], np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]]))
    assert cat.has_vector.tolist() == [True, False, True]
    np.testing.assert_allclose(cat.vectors, [[0.6, 0.8], [0, 0], [0, 1]], atol=1e-7)
    with pytest.raises(ValueError):
        cat.upsert_many(["a"], np.ones((1, 3)))
    with pytest.raises(ValueError):
        ItemCatalog(dim=0)


def test_growth_keeps_existing_vectors():
    cat = ItemCatalog(dim=3, capacity=1)
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((300, 3))
    for i in range(300):
        cat.upsert(f"i{i}", vector=vecs[i])
    np.testing.assert_allclose(cat.vectors, unit_rows(vecs), atol=1e-7)
    assert cat.has_vector.all()
    assert cat.vectors.dtype == np.float32
