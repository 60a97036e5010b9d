"""Item vectors learnt from clicks: what an item learns, when it is installed,
that a given vector wins, and that the result does not depend on batching."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.centres import CentreSet
from stream.core.clicks import ClickBatch
from stream.core.itemlearn import ItemLearner, PartitionParts
from stream.core.items import ItemCatalog
from stream.core.pipeline import EngineConfig, EngineState, process_batch, recommend
from stream.io.synth import SynthConfig, generate
from stream.offline.evaluate import EvalConfig, evaluate

T0 = 1_700_000_000_000
CFG = EngineConfig(
    dim=16, top_m=2, half_life_s=30.0, cf_half_life_s=10.0, recent_items=4,
    item_learn_min_clicks=3, item_learn_every_s=1.0,
)  # fmt: skip


def _two_clusters(**kw):
    cfg = EngineConfig(dim=2, top_m=1, min_score=-1.0, item_learn_every_s=1.0, **kw)
    state = EngineState.in_memory(cfg, CentreSet.create([[1, 0], [0, 1]], created_at_ms=0))
    state.items.upsert("sport", vector=[1, 0])
    state.items.upsert("news", vector=[0, 1])
    return state


def _click(state, user, item, t_s):
    return process_batch(state, ClickBatch.from_columns([user], [item], [T0 + int(t_s * 1000)]))


def test_an_item_learns_the_centre_of_its_clickers_after_min_clicks():
    state = _two_clusters(item_learn_min_clicks=3, item_seed_vectors=False)
    for user in ("a", "b", "c"):
        _click(state, user, "sport", 0)
    row = state.items.rows_for(["new-match"])[0]
    for i, user in enumerate(("a", "b")):
        out = _click(state, user, "new-match", 0.1 + i * 0.1)
        assert out.unknown_items == 1  # no vector yet, and no seed
    _click(state, "c", "new-match", 0.3)
    assert not state.items.has_vector[row]  # 3 clicks, but installed at the next epoch only
    out = _click(state, "a", "new-match", 1.5)
    assert out.unknown_items == 0 and state.items.learnt[row]
    np.testing.assert_allclose(state.items.vectors[row], [1, 0], atol=1e-6)
    assert state.learner.stats(state.items) == {
        "given": 2, "learnt": 1, "seed_only": 0, "none": 0, "learnt_from_clicks": 4.0
    }  # fmt: skip


def test_a_given_vector_replaces_a_learnt_one_for_good():
    state = _two_clusters(item_learn_min_clicks=1, item_seed_vectors=False)
    _click(state, "a", "sport", 0)
    _click(state, "a", "x", 0.5)
    _click(state, "a", "x", 1.5)  # installs x's learnt vector (the sport centre)
    row = state.items.rows_for(["x"])[0]
    assert state.items.learnt[row]
    state.items.upsert("x", vector=[0, 1])
    for t in (2.5, 3.5, 4.5):
        _click(state, "a", "x", t)
    assert state.items.given[row] and not state.items.learnt[row]
    np.testing.assert_allclose(state.items.vectors[row], [0, 1])


def test_seeds_only_while_no_item_has_a_given_vector():
    cfg = EngineConfig(dim=2, top_m=1, min_score=-1.0, item_learn_min_clicks=2)
    state = EngineState.in_memory(cfg)
    out = _click(state, "a", "x", 0.1)
    row = state.items.rows_for(["x"])[0]
    assert out.unknown_items == 0 and state.items.seeded[row] and not state.items.given[row]
    cat = ItemCatalog(dim=2)
    ItemLearner(dim=2).seed(cat, cat.rows_for(["x"]))
    np.testing.assert_array_equal(state.items.vectors[row], cat.vectors[0])  # same seed anywhere
    assert not state.items.informative[row]
    assert state.learner.stats(state.items) == {
        "given": 0, "learnt": 0, "seed_only": 1, "none": 0, "learnt_from_clicks": 0.0
    }  # fmt: skip
    state.items.upsert("sport", vector=[1, 0])  # from now on, users get vectors from given ones
    out = _click(state, "a", "y", 0.2)
    assert out.unknown_items == 1 and not state.items.has_vector[state.items.rows_for(["y"])[0]]


@pytest.fixture(scope="module")
def data():
    cfg = SynthConfig(n_users=150, n_clusters=5, n_items=300, dim=16, n_events=4000, seed=6,
                      noise=0.2, out_of_order=0.05)  # fmt: skip
    return generate(cfg)


def _run(data, batch_size, n_events, parts=None):
    """The engine over the first ``n_events`` clicks; ``parts``: a list that
    gets what the learner recorded after each batch."""
    rng = np.random.default_rng(0)
    centres = CentreSet.create(
        data.centres + 0.3 * rng.standard_normal(data.centres.shape), created_at_ms=0
    )
    state = EngineState.in_memory(CFG, centres=centres)
    half = len(data.item_ids) // 2  # half of the items come without a vector
    state.items.upsert_many(data.item_ids[:half], data.item_vectors[:half])
    state.learner.record = parts is not None
    clicks = data.click_batch(0, n_events)
    for start in range(0, n_events, batch_size):
        process_batch(state, clicks.slice(start, start + batch_size))
        if parts is not None:
            parts.append(state.learner.take_recorded())
    return state


def _sums(learner, items, ids):
    """(n, 1 + dim) clicks and sums the learner holds for ``ids`` (zeros: none)."""
    rows = items.rows_for(ids)
    out = np.zeros((len(ids), 1 + learner.dim))
    slots = np.full(len(rows), -1)
    inside = rows < len(learner._slot)
    slots[inside] = learner._slot[rows[inside]]
    have = slots >= 0
    out[have, 0] = learner._clicks[slots[have]]
    out[have, 1:] = learner._sum[slots[have]]
    return out


def test_what_is_recorded_adds_up_to_the_sums_and_rebuilds_a_learner(data):
    parts: list = []
    state = _run(data, 300, 3000, parts)
    ids = data.item_ids
    total = np.zeros((len(ids), 1 + CFG.dim))
    for rows, values in parts:
        assert (np.diff(rows) > 0).all() and values.shape == (len(rows), 1 + CFG.dim)
        total[[ids.index(state.items.ids[r]) for r in rows.tolist()]] += values
    np.testing.assert_allclose(total, _sums(state.learner, state.items, ids), atol=1e-9)
    assert total[:, 0].sum() == pytest.approx(
        state.learner.stats(state.items)["learnt_from_clicks"]
    )
    # a fresh worker given the parts (as its partitions' stores hold them)
    # holds the same sums and installs every vector that is ready
    cat, learner = ItemCatalog(CFG.dim), CFG.item_learner()
    half = len(ids) // 2
    cat.upsert_many(ids[:half], data.item_vectors[:half])
    keep = total[:, 0] != 0
    taught = cat.rows_for([i for i, k in zip(ids, keep, strict=True) if k])
    installed = learner.add(cat, taught, total[keep], install=True)
    assert len(installed) > 20
    np.testing.assert_allclose(_sums(learner, cat, ids), total, atol=1e-9)
    learnt = state.learner.ready(state.items)
    mine = cat.rows_for([state.items.ids[r] for r in np.flatnonzero(learnt)])
    assert learner.ready(cat)[mine].all()  # and those ready since the run's last epoch:
    ready = {i for i, n in zip(ids[half:], total[half:, 0], strict=True) if n >= 3 - 1e-9}
    assert {cat.ids[r] for r in np.flatnonzero(learner.ready(cat))} == ready
    # taking a part out leaves the rest, and the next install refreshes the vectors
    rows, values = parts[0]
    first = [state.items.ids[r] for r in rows.tolist()]
    learner.add(cat, cat.rows_for(first), -values, install=False)
    left = total[[ids.index(i) for i in first]] - values
    np.testing.assert_allclose(_sums(learner, cat, first), left, atol=1e-9)
    assert set(learner.pending.tolist()) == set(cat.rows_for(first).tolist())


def test_the_state_does_not_depend_on_the_batching(data):
    runs = {size: _run(data, size, 1500) for size in (1, 13, 1500)}
    one = runs[1]
    assert one.learner.installed > 0 and one.learner.stats(one.items)["learnt"] > 20
    for state in runs.values():
        assert state.digest() == one.digest()
        np.testing.assert_array_equal(state.items.vectors, one.items.vectors)
        np.testing.assert_array_equal(state.items.learnt, one.items.learnt)
    assert _run(data, 256, 4000).digest() == _run(data, 4000, 4000).digest()


def test_learnt_vectors_point_to_their_items_planted_cluster(data):
    state = _run(data, 500, 4000)
    learnt = np.flatnonzero(state.learner.ready(state.items))
    assert len(learnt) > 50
    rows = state.items.rows_for(data.item_ids)
    true_vec = np.zeros_like(state.items.vectors)
    true_vec[rows] = data.item_vectors
    # the learnt direction is the clickers' centres: nearest the centre the item's own is
    home = np.argmax(true_vec[learnt] @ state.centres.vectors.T, axis=1)
    got = np.argmax(state.items.vectors[learnt] @ state.centres.vectors.T, axis=1)
    assert (home == got).mean() > 0.6  # chance: 1 in 5


def test_a_log_without_any_item_vector_gets_recommendations(data):
    clicks = data.click_batch(0, 4000)
    report = evaluate(clicks, None, EvalConfig(n=10, warmup=0.5, k=5, engine=CFG))
    assert report["items_with_vector"] == 0
    assert report["item_vector_coverage"]["clicks_learnt"] > 0.5
    engine = report["methods"]["engine"]["hit_rate"]
    assert engine > report["methods"]["popularity"]["hit_rate"]
    # and a state built the same way serves a user
    state = EngineState.in_memory(CFG)
    process_batch(state, clicks.slice(0, 2000))
    assert state.learner.stats(state.items)["seed_only"] > 0
    rows = np.concatenate([r for _, r in state.users.iter_chunks()])
    assert (rows["weight"] > 0).all()  # every user has a vector from the seeds
    vectors = rows["mean"][:5]
    state.centres = CentreSet.create(vectors, created_at_ms=0)
    process_batch(state, clicks.slice(2000, 4000))
    assert recommend(state, clicks.user_ids[-1], n=5)


# -- PartitionParts: every worker learns from every partition's clicks ---------------
def _part(rng, n_items: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Totals of a partition: (rows, (n, 1 + dim)) for a random subset of items."""
    rows = np.sort(rng.choice(n_items, size=n_items // 2, replace=False)).astype(np.int64)
    values = np.empty((len(rows), 1 + dim))
    values[:, 0] = rng.integers(1, 5, len(rows))
    values[:, 1:] = rng.normal(size=(len(rows), dim))
    return rows, values


def _held(learner: ItemLearner, n_items: int) -> np.ndarray:
    out = np.zeros((n_items, 1 + learner.dim))
    for row in range(n_items):
        slot = learner._slot[row] if row < len(learner._slot) else -1
        if slot >= 0:
            out[row, 0] = learner._clicks[slot]
            out[row, 1:] = learner._sum[slot]
    return out


def test_partition_parts_hold_every_partitions_latest_totals_once_through_moves():
    rng = np.random.default_rng(4)
    dim, n_items = 3, 12
    cat = ItemCatalog(dim=dim)
    cat.rows_for([f"i{r}" for r in range(n_items)])
    parts = PartitionParts(ItemLearner(dim=dim, min_clicks=1))
    latest = {p: _part(rng, n_items, dim) for p in range(3)}

    def want() -> np.ndarray:
        out = np.zeros((n_items, 1 + dim))
        for rows, values in latest.values():
            out[rows] += values
        return out

    parts.open(cat, 0, *latest[0])  # its own: the store's part
    for p in (1, 2):  # the others' published totals, the first ones out of date
        rows, values = latest[p]
        parts.receive(cat, p, rows[::2], values[::2] * 0.5)
        parts.receive(cat, p, rows, values)
    np.testing.assert_allclose(_held(parts.learner, n_items), want())
    # its own partition's records come back: held, not added twice
    parts.receive(cat, 0, *latest[0])
    np.testing.assert_allclose(_held(parts.learner, n_items), want())
    # partition 1 moves here: the store's part (further on) replaces the published one
    latest[1] = (latest[1][0], latest[1][1] * 1.5)
    parts.open(cat, 1, *latest[1])
    np.testing.assert_allclose(_held(parts.learner, n_items), want())
    # partition 0 moves away: its store's part out, its last published totals in
    parts.close(cat, 0, *latest[0])
    np.testing.assert_allclose(_held(parts.learner, n_items), want())
    assert parts.own == {1}
    # its new owner publishes newer totals: the change is added
    latest[0] = (latest[0][0], latest[0][1] * 2.0)
    parts.receive(cat, 0, *latest[0])
    np.testing.assert_allclose(_held(parts.learner, n_items), want())
    # vectors changed by received parts wait for the next epoch boundary
    assert set(latest[0][0].tolist()) <= set(parts.learner.pending.tolist())
    parts.learner.install(cat)
    ready = np.flatnonzero(want()[:, 0] >= 1)
    for row in ready.tolist():
        v = want()[row, 1:]
        np.testing.assert_allclose(cat.vectors[row], v / np.linalg.norm(v), rtol=1e-5, atol=1e-6)
