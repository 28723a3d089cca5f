"""Closed-loop users: item space from real data, clicks driven by relevance and position, drift."""

from __future__ import annotations

import numpy as np
import pytest

from dcrec.simulator.users import LatentInterestUsers, LatentUserConfig, Response, item_vectors


@pytest.fixture(scope="module")
def model(ml_split, ml100k) -> LatentInterestUsers:  # type: ignore[no-untyped-def]
    vecs = item_vectors(ml_split.cloud_sequences(), ml100k.n_items, dim=16)
    pop = np.bincount(ml_split.cloud.item, minlength=ml100k.n_items + 1)
    return LatentInterestUsers(vecs, pop, LatentUserConfig(dim=16))


def test_item_vectors_are_unit_and_capture_cooccurrence(ml_split, ml100k) -> None:  # type: ignore[no-untyped-def]
    seqs = ml_split.cloud_sequences()
    v = item_vectors(seqs, ml100k.n_items, dim=16)
    assert v.shape == (ml100k.n_items + 1, 16) and v.dtype == np.float32
    norms = np.linalg.norm(v, axis=1)
    assert norms[0] == 0.0
    seen = np.unique(np.concatenate(seqs))
    assert np.allclose(norms[seen], 1.0, atol=1e-4)
    # A user's own items sit closer to each other than to random items.
    rng = np.random.default_rng(0)
    own, rand = [], []
    for s in seqs[:100]:
        a, b = rng.choice(s, 2, replace=False)
        own.append(float(v[a] @ v[b]))
        rand.append(float(v[a] @ v[rng.choice(seen)]))
    assert np.mean(own) > np.mean(rand) + 0.1


def test_relevant_slates_get_more_clicks_and_the_top_more_than_the_bottom(model: LatentInterestUsers,
                                                                         ml_split) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    hist = ml_split.cloud_sequences()[3]
    state = model.initial_state(hist, rng)
    rel = model.vectors @ state.interest
    rel[list(state.consumed)] = -np.inf
    rel[~model.valid] = -np.inf
    order = np.argsort(-rel)
    good, bad = order[:10], order[300:310]
    clicks_good = [model.response(state, good, rng) for _ in range(2000)]
    clicks_bad = [model.response(state, bad, rng) for _ in range(2000)]
    for slate, responses in ((good, clicks_good), (bad, clicks_bad)):
        for r in responses:  # a click is on the slate; an organic choice is new and off the slate
            assert r.item not in state.consumed
            assert (r.item == slate[r.position]) if r.clicked else (r.item not in set(slate))
    ctr_good = np.mean([r.clicked for r in clicks_good])
    ctr_bad = np.mean([r.clicked for r in clicks_bad])
    assert ctr_good > 2 * ctr_bad and ctr_good > 0.2
    pos = np.bincount([r.position for r in clicks_good if r.clicked], minlength=10)
    assert pos[:3].sum() > pos[7:].sum()  # cascade: users rarely look far down


def test_consuming_pulls_interest_and_time_drifts_it(model: LatentInterestUsers, ml_split) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    state = model.initial_state(ml_split.cloud_sequences()[5], rng)
    target = int(np.argmin(model.vectors @ state.interest + 10 * ~model.valid))
    before = float(model.vectors[target] @ state.interest)
    for _ in range(5):
        state = model.next_state(state, Response(target, 0), dt_s=0.0, rng=rng)
    assert float(model.vectors[target] @ state.interest) > before + 0.3
    assert target in state.consumed
    a = state.interest.copy()
    state = model.next_state(state, Response(target, 0), dt_s=0.0, rng=rng)
    b = state.interest.copy()
    state = model.next_state(state, Response(target, 0), dt_s=10 * 3600.0, rng=rng)
    assert np.linalg.norm(state.interest - b) > np.linalg.norm(b - a)  # hours drift more than no time
    assert abs(float(np.linalg.norm(state.interest)) - 1.0) < 1e-4


def test_clicks_lengthen_sessions(model: LatentInterestUsers, ml_split) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    state = model.initial_state(ml_split.cloud_sequences()[0], rng)
    after_click = np.mean([model.next_gap_s(state, Response(1, 0), rng) for _ in range(4000)])
    after_organic = np.mean([model.next_gap_s(state, Response(1, -1), rng) for _ in range(4000)])
    assert after_click < after_organic


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="examine"):
        LatentUserConfig(examine=1.5).validate()
    with pytest.raises(ValueError, match="item vectors"):
        LatentInterestUsers(np.zeros((5, 4), np.float32), np.zeros(6), LatentUserConfig(dim=4))
