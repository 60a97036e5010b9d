"""Offline evaluation: metrics, cluster agreement and the replay against baselines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from stream.core.clicks import ClickBatch
from stream.core.pipeline import EngineConfig
from stream.io.synth import SynthConfig, generate
from stream.offline.evaluate import (
    BASELINES,
    METHODS,
    EvalConfig,
    _Scores,
    clustering_agreement,
    evaluate,
)


def test_scores_count_hits_rank_and_coverage():
    s = _Scores()
    s.add(["a", "b", "c"], "b")  # rank 2
    s.add(["d", "a"], "x")  # miss
    assert s.hits == 1
    assert s.rr == pytest.approx(0.5)
    assert s.ndcg == pytest.approx(1 / np.log2(3))
    assert s.recommended == {"a", "b", "c", "d"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustering_agreement_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.7, truth * 3 + 1, rng.integers(0, 9, 400))
    got = clustering_agreement(pred, truth)
    assert got["ari"] == pytest.approx(adjusted_rand_score(truth, pred), abs=1e-4)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(truth, pred), abs=1e-4)


def test_identical_labelings_up_to_renaming_agree_fully():
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert clustering_agreement(truth + 7, truth) == {"ari": 1.0, "nmi": 1.0}


@pytest.fixture(scope="module")
def planted_log():
    data = generate(
        SynthConfig(
            n_users=400, n_clusters=4, n_items=400, dim=16, n_events=6000, seed=4,
            rate_per_s=6000 / (10 * 86_400),  # ten days: the CF half-life matters
        )
    )  # fmt: skip
    clicks = ClickBatch.from_columns(
        [data.user_ids[i] for i in data.click_user.tolist()],
        [data.item_ids[i] for i in data.click_item.tolist()],
        data.click_ts,
        data.click_weight,
    )
    order = np.argsort(clicks.ts, kind="stable")
    clicks = ClickBatch.from_columns(
        [clicks.user_ids[i] for i in order], [clicks.item_ids[i] for i in order],
        clicks.ts[order], clicks.weights[order],
    )  # fmt: skip
    truth = dict(zip(data.user_ids, data.truth_after.tolist(), strict=True))
    return clicks, list(data.item_records(with_vectors=True)), truth


@pytest.mark.slow
def test_engine_beats_popularity_and_finds_the_planted_clusters(planted_log):
    clicks, records, truth = planted_log
    config = EvalConfig(n=10, warmup=0.3, k=4, engine=EngineConfig(dim=16))
    phases = []
    report = evaluate(clicks, records, config, truth, progress=lambda p, n, t: phases.append(p))
    assert {"warm-up", "evaluate"} <= set(phases)
    assert report["evaluated"] == len(clicks) - int(len(clicks) * 0.3)
    assert set(report["methods"]) == set(METHODS)
    for m in report["methods"].values():
        assert 0 <= m["mrr"] <= m["hit_rate"] <= 1 and 0 < m["coverage"] <= 1
    hr = {name: m["hit_rate"] for name, m in report["methods"].items()}
    assert hr["engine"] > 1.5 * hr["popularity"]
    assert hr["engine"] > hr["centroid_item"]
    assert report["engine_vs_popularity"] == pytest.approx(
        hr["engine"] / hr["popularity"], rel=1e-2
    )
    assert report["clusters"]["after_recompute"]["ari"] > 0.8
    churn = report["recompute_id_churn"]
    assert churn["user_churn_with_matching"] <= 0.05
    assert churn["user_churn_with_matching"] <= churn["user_churn_without_matching"]


def test_item_vectors_given_as_arrays_work_like_records(planted_log):
    clicks, records, _ = planted_log
    ids = [r["item_id"] for r in records]
    vectors = np.array([r["vector"] for r in records], dtype=np.float32)
    config = EvalConfig(n=5, warmup=0.5, k=4, engine=EngineConfig(dim=16))
    part = clicks.slice(0, 2000)
    a = evaluate(part, records, config)
    b = evaluate(part, None, config, item_vectors=(ids, vectors))
    assert a["methods"]["engine"] == b["methods"]["engine"]
    assert "clusters" not in a  # no truth given


def test_warmup_must_leave_clicks_on_both_sides(planted_log):
    clicks, records, _ = planted_log
    with pytest.raises(ValueError, match="warmup"):
        evaluate(clicks.slice(0, 1), records, EvalConfig(warmup=0.5, k=2))


def test_items_without_a_vector_or_first_seen_after_the_warmup(planted_log):
    # like --embed on a real log: only some items have a vector, new items keep arriving
    clicks, records, _ = planted_log
    part = clicks.slice(0, 3000)
    warm_items = set(part.slice(0, 1500).item_ids)
    known = [r for r in records if r["item_id"] in warm_items][: len(warm_items) // 2]
    ids = [r["item_id"] for r in known]
    vectors = np.array([r["vector"] for r in known], dtype=np.float32)
    report = evaluate(
        part, None, EvalConfig(n=5, warmup=0.5, k=3, engine=EngineConfig(dim=16)),
        item_vectors=(ids, vectors),
    )  # fmt: skip
    assert report["items_with_vector"] == len(ids)
    assert report["items"] == len(set(part.item_ids)) > len(ids)
    assert report["methods"]["engine"]["hit_rate"] > 0


@pytest.mark.slow
def test_merge_and_recompute_jobs_run_in_log_time(planted_log):
    clicks, records, truth = planted_log
    days = (clicks.ts[-1] - clicks.ts[int(len(clicks) * 0.3)]) / 86_400_000
    # k=8 on 4 planted clusters with a high merge threshold: the merge rule folds clusters
    config = EvalConfig(
        n=5, warmup=0.3, k=8, engine=EngineConfig(dim=16), min_cluster_size=60,
        merge_every_ms=3_600_000.0, recompute_every_ms=None,
    )  # fmt: skip
    report = evaluate(clicks, records, config)
    jobs = report["jobs"]
    assert jobs["merges"] >= 1 and jobs["recomputes"] == 0
    assert report["k_at_end"] == 8 - jobs["ids_merged"] < 8
    # daily recomputes with k=4 keep the ids of the persisting planted clusters
    config = EvalConfig(
        n=5, warmup=0.3, k=4, engine=EngineConfig(dim=16), merge_every_ms=None,
        recompute_every_ms=86_400_000.0,
    )  # fmt: skip
    report = evaluate(clicks, records, config, truth)
    jobs = report["jobs"]
    assert jobs["recomputes"] == int(days)
    published = jobs["recomputes"] - jobs["recomputes_withheld"]
    assert jobs["ids_matched"] == 4 * published and jobs["ids_new"] == 0
    assert report["clusters"]["at_end"]["ari"] > 0.8


def test_scores_by_history_split_the_overall_ones(planted_log):
    clicks, records, _ = planted_log
    part = clicks.slice(0, 3000)
    report = evaluate(part, records, EvalConfig(n=5, warmup=0.5, k=3, engine=EngineConfig(dim=16)))
    buckets = report["by_history"]
    assert set(buckets) <= {"0", "1-4", "5-19", "20+"} and len(buckets) >= 2
    assert sum(b["evaluated"] for b in buckets.values()) == report["evaluated"]
    for method, overall in report["methods"].items():
        hits = sum(b["methods"][method]["hit_rate"] * b["evaluated"] for b in buckets.values())
        assert hits == pytest.approx(
            overall["hit_rate"] * report["evaluated"], abs=0.01 * len(buckets) + 0.5
        )
    for b in buckets.values():
        best = b["best_baseline"]
        assert all(b["methods"][best]["hit_rate"] >= b["methods"][m]["hit_rate"] for m in BASELINES)
        pop = b["methods"]["popularity"]["hit_rate"]
        if pop:
            assert b["engine_vs_popularity"] == pytest.approx(
                b["methods"]["engine"]["hit_rate"] / pop, abs=2e-3
            )


def test_the_ratio_to_the_best_baseline_comes_with_an_interval_around_it(planted_log):
    clicks, records, _ = planted_log
    part = clicks.slice(0, 3000)
    report = evaluate(part, records, EvalConfig(n=5, warmup=0.5, k=3, engine=EngineConfig(dim=16)))
    for metric in ("hit_rate", "ndcg"):
        lo, hi = report["vs_best_baseline_interval"][metric]
        ratio = report["vs_best_baseline"]["engine"][metric]
        assert lo < hi and lo - 0.01 <= ratio <= hi + 0.01, (metric, lo, ratio, hi)


def test_ratio_interval_draws_a_users_clicks_together():
    """The engine wins for half of 10 users and loses for the rest: drawn by
    user the ratio swings with which users a round draws, so its interval is
    wider than for the same clicks taken as 1,000 one-click users."""
    from stream.offline.evaluate import ratio_interval

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(10), 100)
    good = users % 2 == 0
    engine = (rng.random(1000) < np.where(good, 0.8, 0.2)).astype(float)
    best = (rng.random(1000) < np.where(good, 0.2, 0.8)).astype(float)
    few = ratio_interval(engine, best, users)["hit_rate"]
    many = ratio_interval(engine, best, np.arange(1000))["hit_rate"]
    assert few[0] < many[0] < 1 < many[1] < few[1]
    assert ratio_interval(engine, best, users, seed=5)["hit_rate"] != few  # the seed draws
    assert ratio_interval(engine, best, users)["hit_rate"] == few


def test_ratio_interval_has_no_finite_bound_where_the_baseline_rarely_scores():
    """The baseline scores for 3 users of 200: rounds that draw none of them give
    engine / 0, an unbounded ratio, and the interval must not hide it."""
    from stream.offline.evaluate import ratio_interval

    users = np.arange(200)
    engine = np.ones(200)
    best = np.zeros(200)
    best[:3] = 1.0
    assert ratio_interval(engine, best, users)["hit_rate"] is None
    assert ratio_interval(engine, np.zeros(200), users)["hit_rate"] is None
    assert ratio_interval(np.zeros(200), np.zeros(200), users)["hit_rate"] is None
