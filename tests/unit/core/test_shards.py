"""The user phase split over threads (stream.core.shards) and the in-place user records."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.assign import top_rows
from stream.core.centres import CentreSet
from stream.core.pipeline import EngineConfig, EngineState, process_batch
from stream.core.shards import _top_into
from stream.io.synth import SynthConfig, generate

CFG = EngineConfig(dim=16, top_m=2, half_life_s=30.0, cf_half_life_s=10.0, recent_items=4)


class CopyingStore:
    """The in-memory store seen only through ``read_many``/``write_many`` (as the
    worker's RocksDB store is): records are copied in and out."""

    def __init__(self, store):
        self._store = store
        self.dtype = store.dtype

    def read_many(self, user_ids, hashes=None):
        return self._store.read_many(user_ids, hashes)

    def write_many(self, batch):
        self._store.write_many(batch)

    def __len__(self):
        return len(self._store)

    def iter_chunks(self, size=65536):
        return self._store.iter_chunks(size)


def _run(threads: int, copying: bool = False):
    """Digest and per-batch outputs of one synthetic stream: users repeat inside
    batches, 10% of items have no vector, and halfway centre 0 is retired
    (aliased to 1), so aliases are followed too."""
    data = generate(
        SynthConfig(
            n_users=300, n_clusters=6, n_items=300, dim=16, n_events=4000, seed=5,
            noise=0.3, out_of_order=0.05,
        )
    )  # fmt: skip
    rng = np.random.default_rng(1)
    vectors = data.centres + 0.4 * rng.standard_normal(data.centres.shape)
    config = EngineConfig(**{**CFG.__dict__, "threads": threads})
    state = EngineState.in_memory(config, centres=CentreSet.create(vectors, created_at_ms=0))
    if copying:
        state.users = CopyingStore(state.users)
    n = int(len(data.item_ids) * 0.9)
    state.items.upsert_many(data.item_ids[:n], data.item_vectors[:n])
    clicks = data.click_batch(0, data.n_events)
    outputs = []
    for start in range(0, len(clicks), 250):
        if start == 2000:
            ids = np.arange(1, len(vectors))
            state.centres = CentreSet.create(
                vectors[1:], ids=ids, aliases={0: 1}, version=2, created_at_ms=0
            )
        out = process_batch(state, clicks.slice(start, start + 250))
        ch = out.changes
        outputs.append(
            (
                ch.user_ids, ch.before_ids.tolist(), ch.before_scores.tolist(), ch.ids.tolist(),
                ch.scores.tolist(), ch.ts.tolist(), out.cf_delta.cluster_ids.tolist(),
                out.cf_delta.item_keys.tolist(), out.cf_delta.values.tolist(), out.mean_distance,
                out.unassigned,
            )
        )  # fmt: skip
    return state.digest(), outputs


def test_two_threads_give_the_same_state_and_outputs_as_one():
    one, two = _run(threads=1), _run(threads=2)
    assert one[0] == two[0]
    assert one[1] == two[1]
    assert sum(len(batch[0]) for batch in one[1]) > 300  # memberships did change


def test_records_in_place_and_copied_give_the_same_state_and_outputs():
    in_place, copied = _run(threads=2), _run(threads=2, copying=True)
    assert in_place[0] == copied[0]
    assert in_place[1] == copied[1]


@numba.njit
def _tops(scores, m):
    out = np.empty((len(scores), m), dtype=np.int64)
    for r in range(len(scores)):
        _top_into(scores[r], out[r])
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8), st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**31 - 1),
    st.booleans(),
)  # fmt: skip
def test_compiled_top_matches_top_rows_ties_included(n, k, m, seed, coarse):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k)).astype(np.float32)
    if coarse:  # many equal scores
        scores = np.round(scores).astype(np.float32)
    m = min(m, k)
    assert _tops(scores, m).tolist() == top_rows(scores.copy(), m).tolist()
