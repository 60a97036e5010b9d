"""The synthetic generator: determinism, schema, planted structure, drift, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson
import pytest

from stream.errors import ConfigError
from stream.io.synth import (
    MALFORMED_KINDS,
    SynthConfig,
    SynthData,
    generate,
    write_dataset,
    write_jsonl,
)

ARRAYS = (
    "centres",
    "item_vectors",
    "item_cluster",
    "truth_before",
    "truth_after",
    "click_user",
    "click_item",
    "click_ts",
    "click_weight",
    "late_index",
    "malformed_index",
    "malformed_kind",
)
LISTS = ("item_ids", "user_ids", "item_subcategory", "item_tags", "item_entities")

DRIFT = SynthConfig(
    n_users=3000,
    n_events=60_000,
    seed=7,
    drift_at=0.5,
    drift_users=0.2,
    shrink_cluster=2,
    shrink_keep=0.05,
    new_cluster=True,
    out_of_order=0.05,
    malformed=0.02,
)


@pytest.fixture(scope="module")
def data() -> SynthData:
    return generate(SynthConfig())


@pytest.fixture(scope="module")
def drifted() -> SynthData:
    return generate(DRIFT)


# run here and in a fresh interpreter: same config -> same bytes
DIGEST = """
import hashlib, numpy as np, orjson

def digest(d):
    h = hashlib.sha256()
    for name in ARRAYS:
        h.update(np.ascontiguousarray(getattr(d, name)).tobytes())
    for name in LISTS:
        h.update(orjson.dumps(getattr(d, name)))
    return h.hexdigest()
"""


def _digest(d: SynthData) -> str:
    scope = {"ARRAYS": ARRAYS, "LISTS": LISTS}
    exec(DIGEST, scope)
    return scope["digest"](d)


# ----------------------------------------------------------------- determinism, shapes


def test_same_config_gives_identical_data(drifted):
    again = generate(DRIFT)
    for name in ARRAYS:
        a, b = getattr(drifted, name), getattr(again, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for name in LISTS:
        assert getattr(drifted, name) == getattr(again, name), name
    assert again.drift_index == drifted.drift_index
    assert list(again.records(0, 500)) == list(drifted.records(0, 500))


def test_identical_across_processes():
    cfg = SynthConfig(n_users=300, n_items=200, n_events=3000, seed=3, drift_at=0.4, malformed=0.1)
    code = (
        "from stream.io.synth import SynthConfig, generate\n"
        f"ARRAYS, LISTS = {ARRAYS!r}, {LISTS!r}\n"
        f"{DIGEST}\n"
        f"print(digest(generate(SynthConfig(**{cfg.__dict__!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(generate(cfg))


def test_different_seed_differs():
    a = generate(SynthConfig(n_events=2000, seed=1))
    b = generate(SynthConfig(n_events=2000, seed=2))
    assert not np.array_equal(a.centres, b.centres)
    assert not np.array_equal(a.click_item, b.click_item)
    assert not np.array_equal(a.truth_before, b.truth_before)


def test_event_count_does_not_change_the_world():
    a = generate(SynthConfig(n_events=1000, seed=5))
    b = generate(SynthConfig(n_events=3000, seed=5))
    assert np.array_equal(a.item_vectors, b.item_vectors)
    assert np.array_equal(a.truth_before, b.truth_before)


def test_shapes_and_dtypes(data, drifted):
    cfg = data.config
    assert data.centres.shape == (cfg.n_clusters, cfg.dim) and data.centres.dtype == np.float32
    assert data.item_vectors.shape == (cfg.n_items, cfg.dim)
    assert data.item_vectors.dtype == np.float32
    assert data.item_cluster.shape == (cfg.n_items,) and data.item_cluster.dtype == np.int32
    assert len(data.item_ids) == cfg.n_items and data.item_ids[42] == "i00042"
    assert len(data.user_ids) == cfg.n_users and data.user_ids[42] == "u000042"
    assert len(set(data.item_ids)) == cfg.n_items and len(set(data.user_ids)) == cfg.n_users
    for name in ("truth_before", "truth_after"):
        arr = getattr(data, name)
        assert arr.shape == (cfg.n_users,) and arr.dtype == np.int32
    n = cfg.n_events
    for name, dtype in [
        ("click_user", np.int32),
        ("click_item", np.int32),
        ("click_ts", np.int64),
        ("click_weight", np.float64),
    ]:
        arr = getattr(data, name)
        assert arr.shape == (n,) and arr.dtype == dtype, name
    assert data.click_user.max() < cfg.n_users and data.click_item.max() < cfg.n_items
    assert data.drift_index is None and np.array_equal(data.truth_before, data.truth_after)
    assert data.truth(after_drift=True) is data.truth_after
    # the new cluster adds a centre and its own items
    c = DRIFT.n_clusters + 1
    assert drifted.centres.shape == (c, DRIFT.dim) and drifted.n_planted == c
    n_new = DRIFT.n_items // DRIFT.n_clusters
    assert drifted.item_vectors.shape[0] == DRIFT.n_items + n_new == len(drifted.item_ids)
    assert (drifted.item_cluster == c - 1).sum() == n_new
    assert drifted.drift_index == DRIFT.n_events // 2


def test_bad_config_raises():
    with pytest.raises(ConfigError):
        SynthConfig(noise=1.5)
    with pytest.raises(ConfigError):
        SynthConfig(n_items=3, n_clusters=8)
    with pytest.raises(ConfigError):
        SynthConfig(new_cluster=True)  # needs drift_at
    with pytest.raises(ConfigError):
        SynthConfig(drift_at=0.5, shrink_cluster=8)


# ----------------------------------------------------------------- records


def test_click_records_match_the_schema(data):
    recs = list(data.click_records())
    assert len(recs) == data.config.n_events
    assert len({r["event_id"] for r in recs}) == len(recs)
    for r in recs[:5000]:
        assert set(r) <= {"event_id", "user_id", "item_id", "ts", "weight"}
        for key in ("event_id", "user_id", "item_id"):
            assert isinstance(r[key], str) and r[key]
        assert type(r["ts"]) is int and r["ts"] >= 0
        if "weight" in r:
            assert type(r["weight"]) is float and r["weight"] > 0 and r["weight"] != 1.0
    i = 1234
    r = recs[i]
    assert r["event_id"] == f"e{i:09d}"
    assert r["user_id"] == data.user_ids[data.click_user[i]]
    assert r["item_id"] == data.item_ids[data.click_item[i]]
    assert r["ts"] == data.click_ts[i]
    assert list(data.click_records(100, 200)) == recs[100:200]
    assert list(data.click_records(-3)) == recs[-3:]


def test_weights_are_mostly_one(data):
    w = data.click_weight
    other = w[w != 1.0]
    assert 0.07 < other.size / w.size < 0.13
    assert other.min() >= 0.5 and other.max() <= 3.0


def test_click_batch(data):
    b = data.click_batch(10, 20)
    assert len(b) == 10 and b.event_ids[0] == "e000000010"
    assert b.user_ids == [r["user_id"] for r in data.click_records(10, 20)]


def test_item_records(data):
    with_vec = list(data.item_records())
    meta = list(data.item_records(with_vectors=False))
    assert len(with_vec) == len(meta) == data.config.n_items
    ts = data.config.start_ms - 1
    assert set(with_vec[0]) == {"item_id", "ts", "vector"}
    assert set(meta[0]) == {"item_id", "ts", "category", "subcategory", "tags", "entities"}
    assert np.allclose(
        np.array([r["vector"] for r in with_vec], dtype=np.float32), data.item_vectors
    )
    for i, r in enumerate(meta):
        home = int(data.item_cluster[i])
        assert r["ts"] == ts and r["item_id"] == data.item_ids[i]
        assert r["category"] == f"topic-{home}"
        assert r["subcategory"].startswith(f"topic-{home}-")
        assert 2 <= len(r["tags"]) <= 4 and len(set(r["tags"])) == len(r["tags"])
        assert 0 <= len(r["entities"]) <= 2
        assert all(isinstance(t, str) and t for t in r["tags"] + r["entities"])
    tags = [t for r in meta for t in r["tags"]]
    assert any(t.startswith("tag-g") for t in tags)  # a few global tags
    assert sum(t.startswith("tag-g") for t in tags) < len(tags) / 2


def test_timestamps_ordered_except_late(data, drifted):
    assert np.all(np.diff(data.click_ts) >= 0) and data.late_index.size == 0
    assert data.click_ts[0] >= data.config.start_ms
    # mean gap follows rate_per_s
    span_s = (data.click_ts[-1] - data.click_ts[0]) / 1000
    assert span_s == pytest.approx(data.config.n_events / data.config.rate_per_s, rel=0.05)

    ts, late = drifted.click_ts, drifted.late_index
    assert late.size == round(DRIFT.out_of_order * DRIFT.n_events)
    on_time = np.ones(ts.size, bool)
    on_time[late] = False
    assert np.all(np.diff(ts[on_time]) >= 0)
    assert np.any(np.diff(ts) < 0)
    # a late event is behind the latest on-time ts seen so far, by at most 5 s
    running = np.maximum.accumulate(np.where(on_time, ts, 0))
    lag = running[late] - ts[late]
    assert lag.max() <= 5000 and np.mean(lag > 0) > 0.9


# ----------------------------------------------------------------- planted structure


def test_centres_are_well_separated(data):
    def max_cos(c):
        g = c @ c.T
        np.fill_diagonal(g, 0)
        return float(np.abs(g).max())

    assert np.allclose(np.linalg.norm(data.centres, axis=1), 1, atol=1e-5)
    assert max_cos(data.centres) < 1e-5  # C <= dim: orthonormal
    many = generate(SynthConfig(n_clusters=60, n_items=600, n_events=0, dim=32))
    assert max_cos(many.centres) < 0.35


def test_item_vectors_unit_and_near_home(data):
    v, home = data.item_vectors, data.item_cluster
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v @ data.centres.T
    assert np.array_equal(sims.argmax(axis=1), home)
    counts = np.bincount(home, minlength=data.config.n_clusters)
    assert counts.max() - counts.min() <= 1  # each cluster owns ~n_items / C


def test_zipf_skew_inside_clusters(data):
    clicks = np.bincount(data.click_item, minlength=len(data.item_ids))
    for c in range(data.config.n_clusters):
        own = np.sort(clicks[data.item_cluster == c])[::-1]
        assert own[0] > 20 * max(np.median(own), 1)


def test_users_click_their_cluster(data):
    cfg = data.config
    home = data.truth_before[data.click_user]
    inside = data.item_cluster[data.click_item] == home
    assert inside.mean() >= 1 - cfg.noise - 0.02
    per_user_in = np.bincount(data.click_user, weights=inside, minlength=cfg.n_users)
    per_user = np.bincount(data.click_user, minlength=cfg.n_users)
    active = per_user >= 20
    assert np.median(per_user_in[active] / per_user[active]) >= 1 - cfg.noise - 0.05
    counts = np.bincount(data.truth_before, minlength=cfg.n_clusters)
    assert counts.max() - counts.min() <= 1


def test_user_activity_skew():
    flat = generate(SynthConfig(n_events=20_000))
    skew = generate(SynthConfig(n_events=20_000, user_activity_a=1.0))
    top = lambda d: np.sort(np.bincount(d.click_user))[::-1][:20].sum() / d.n_events  # noqa: E731
    assert top(skew) > 5 * top(flat)


# ----------------------------------------------------------------- drift


def test_drift_moves_about_drift_users():
    d = generate(SynthConfig(n_users=4000, n_events=20_000, drift_at=0.3, drift_users=0.25))
    moved = d.truth_before != d.truth_after
    assert moved.mean() == pytest.approx(0.25, abs=0.01)
    assert d.drift_index == 6000
    # movers click their new cluster after the drift and their old one before
    movers = moved[d.click_user]
    item_c = d.item_cluster[d.click_item]
    before, after = slice(0, d.drift_index), slice(d.drift_index, None)
    m_before, m_after = movers[before], movers[after]
    home_b = d.truth_before[d.click_user]
    home_a = d.truth_after[d.click_user]
    assert (item_c[before][m_before] == home_b[before][m_before]).mean() > 0.85
    assert (item_c[after][m_after] == home_a[after][m_after]).mean() > 0.85


def test_shrink_leaves_the_cluster_small(drifted):
    s = DRIFT.shrink_cluster
    n_before = (drifted.truth_before == s).sum()
    n_after = (drifted.truth_after == s).sum()
    assert n_after == round(DRIFT.shrink_keep * n_before)
    assert not np.any((drifted.truth_after == s) & (drifted.truth_before != s))
    moved_others = (drifted.truth_before != drifted.truth_after)[drifted.truth_before != s]
    assert moved_others.sum() == round(DRIFT.drift_users * DRIFT.n_users)


def test_new_cluster_appears_only_after_drift(drifted):
    new = DRIFT.n_clusters
    assert not np.any(drifted.truth_before == new)
    joined = (drifted.truth_after == new).sum()
    assert joined > 0.05 * DRIFT.n_users
    is_new_item = drifted.item_cluster[drifted.click_item] == new
    assert not np.any(is_new_item[: drifted.drift_index])
    assert is_new_item[drifted.drift_index :].mean() > 0.05
    sims = drifted.item_vectors[drifted.item_cluster == new] @ drifted.centres.T
    assert np.all(sims.argmax(axis=1) == new)


# ----------------------------------------------------------------- malformed


def _problem(raw: bytes) -> str | None:
    """Why a raw click is bad, or None when it is a valid click."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if not isinstance(rec, dict):
        return "json_array"
    if not isinstance(rec.get("user_id"), str):
        return "missing_user_id"
    if type(rec.get("ts")) is not int:
        return "ts_string"
    if rec.get("weight", 1.0) <= 0:
        return "negative_weight"
    return None


def test_malformed_records(drifted):
    raw = list(drifted.records())
    assert len(raw) == DRIFT.n_events and all(isinstance(r, bytes) for r in raw)
    bad = drifted.malformed_kinds
    assert len(bad) == round(DRIFT.malformed * DRIFT.n_events)
    assert set(bad.values()) == set(MALFORMED_KINDS)
    found = {i: p for i, r in enumerate(raw) if (p := _problem(r)) is not None}
    assert found == bad
    good = next(i for i in range(len(raw)) if i not in bad)
    assert orjson.loads(raw[good]) == next(drifted.click_records(good, good + 1))
    assert list(drifted.records(100, 900)) == raw[100:900]


def test_no_malformed_by_default(data):
    assert data.malformed_kinds == {}
    assert all(_problem(r) is None for r in data.records(0, 2000))


# ----------------------------------------------------------------- files


def test_write_dataset(tmp_path):
    cfg = SynthConfig(
        n_users=50, n_items=40, n_clusters=4, n_events=300, drift_at=0.5, malformed=0.1
    )
    paths = write_dataset(tmp_path / "ds", cfg)
    assert set(paths) == {"clicks", "items", "items_meta", "truth"}
    d = generate(cfg)
    assert paths["clicks"].read_bytes().splitlines() == list(d.records())
    items = [orjson.loads(line) for line in paths["items"].read_bytes().splitlines()]
    assert len(items) == 40 and "vector" in items[0] and "tags" not in items[0]
    meta = [orjson.loads(line) for line in paths["items_meta"].read_bytes().splitlines()]
    assert "vector" not in meta[0] and meta[0]["category"].startswith("topic-")
    truth = orjson.loads(paths["truth"].read_bytes())
    assert truth["before"] == dict(zip(d.user_ids, d.truth_before.tolist(), strict=True))
    assert truth["after"] == dict(zip(d.user_ids, d.truth_after.tolist(), strict=True))
    assert truth["drift_index"] == 150


def test_write_jsonl(tmp_path):
    n = write_jsonl(tmp_path / "a" / "x.jsonl", [{"a": 1}, b'{"b":2}'])
    assert n == 2
    assert (tmp_path / "a" / "x.jsonl").read_bytes() == b'{"a":1}\n{"b":2}\n'
