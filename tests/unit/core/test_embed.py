"""Item vectors learnt from clicks: PPMI co-occurrence + randomized truncated SVD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stream.core.embed import item_records, learn_item_vectors, randomized_svd
from stream.io.synth import SynthConfig, generate
from stream.wire.schemas import validate


@pytest.fixture(scope="module")
def planted():
    """A synthetic log with 6 planted taste clusters and no item vectors used."""
    return generate(
        SynthConfig(n_users=1500, n_clusters=6, n_items=600, dim=16, n_events=60_000, seed=3)
    )


def _clicks(data):
    users = [data.user_ids[i] for i in data.click_user.tolist()]
    items = [data.item_ids[i] for i in data.click_item.tolist()]
    return users, items, data.click_ts


def test_items_of_one_planted_cluster_end_up_close(planted):
    users, items, ts = _clicks(planted)
    emb = learn_item_vectors(users, items, ts, dim=16, min_count=5, seed=0)
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (len(emb), 16)
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    home = dict(zip(planted.item_ids, planted.item_cluster.tolist(), strict=True))
    labels = np.array([home[i] for i in emb.item_ids])
    sims = emb.vectors @ emb.vectors.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    # items clicked by the same planted group are much closer than items of different groups
    assert sims[same].mean() > sims[other].mean() + 0.3
    # the nearest neighbour of most items shares its home cluster
    np.fill_diagonal(sims, -np.inf)
    assert (labels[sims.argmax(axis=1)] == labels).mean() > 0.8


def test_rare_items_are_dropped_and_reported(planted):
    users, items, ts = _clicks(planted)
    users += ["rare-user", "rare-user"]
    items += ["rare-item", items[0]]
    ts = np.concatenate([ts, [ts[-1] + 1, ts[-1] + 2]])
    emb = learn_item_vectors(users, items, ts, dim=8, min_count=5)
    assert emb.dropped["rare-item"] == 1
    assert "rare-item" not in emb.item_ids
    counts = {i: items.count(i) for i in set(items)}
    assert set(emb.dropped) == {i for i, c in counts.items() if c < 5}
    assert set(emb.item_ids) | set(emb.isolated) == {i for i, c in counts.items() if c >= 5}
    assert emb.stats()["items_dropped"] == len(emb.dropped)


def test_an_item_never_co_clicked_is_isolated():
    # two users, each clicking a ring of 12 items; "lonely" is clicked 5 times by
    # users who click nothing else, so it co-occurs with nothing
    users, items = [], []
    for u in range(30):
        for k in range(6):
            users.append(f"u{u}")
            items.append(f"i{(u + k) % 12}")
    for u in range(5):
        users.append(f"solo{u}")
        items.append("lonely")
    emb = learn_item_vectors(users, items, np.arange(len(users)), dim=4, window=3, min_count=5)
    assert emb.isolated == {"lonely": 5}
    assert "lonely" not in emb.item_ids and len(emb) == 12


def test_result_does_not_depend_on_the_order_of_users_in_the_log(planted):
    users, items, _ = _clicks(planted)
    ts = np.arange(len(users), dtype=np.int64) * 10  # no ties: ties keep the log's order
    a = learn_item_vectors(users, items, ts, dim=8, seed=1)
    perm = np.random.default_rng(0).permutation(len(users))
    b = learn_item_vectors(
        [users[i] for i in perm], [items[i] for i in perm], ts[perm], dim=8, seed=1
    )
    assert a.item_ids == b.item_ids and a.nnz == b.nnz and a.n_pairs == b.n_pairs
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-4)


def test_same_seed_same_vectors(planted):
    users, items, ts = _clicks(planted)
    a = learn_item_vectors(users, items, ts, dim=8, seed=5)
    b = learn_item_vectors(users, items, ts, dim=8, seed=5)
    assert np.array_equal(a.vectors, b.vectors)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="same length"):
        learn_item_vectors(["u"], ["a", "b"], np.arange(1))
    with pytest.raises(ValueError, match="dim must be >= 1"):
        learn_item_vectors(["u"], ["a"], np.arange(1), dim=0)
    with pytest.raises(ValueError, match="need at least dim=32"):
        learn_item_vectors(["u", "u"], ["a", "b"], np.arange(2), dim=32, min_count=1)


def test_randomized_svd_matches_the_exact_svd():
    rng = np.random.default_rng(0)
    # a matrix with a clear spectrum: rank 6 plus small noise
    a = rng.standard_normal((200, 6)) @ np.diag([50, 40, 30, 20, 10, 5]) @ rng.standard_normal(
        (6, 150)
    ) + 0.01 * rng.standard_normal((200, 150))
    u, s = randomized_svd(sp.csr_matrix(a), 6, seed=0)
    exact_u, exact_s, _ = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(s, exact_s[:6], rtol=1e-6)
    # same subspace, columns equal up to sign
    assert np.allclose(np.abs(np.sum(u * exact_u[:, :6], axis=0)), 1.0, atol=1e-6)
    dense_u, dense_s = randomized_svd(a, 6, seed=0)
    np.testing.assert_allclose(dense_s, s, rtol=1e-9)
    with pytest.raises(ValueError, match="k must be in"):
        randomized_svd(a, 151)


def test_item_records_are_valid_item_topic_records(planted):
    users, items, ts = _clicks(planted)
    emb = learn_item_vectors(users, items, ts, dim=8)
    records = item_records(emb, ts_ms=int(ts.max()))
    assert len(records) == len(emb)
    for rec in records[:50]:
        validate("item", rec)
    assert records[0]["item_id"] == emb.item_ids[0]
    np.testing.assert_allclose(records[0]["vector"], emb.vectors[0], rtol=1e-6)
    with pytest.raises(ValueError):
        item_records(emb, ts_ms=-1)
