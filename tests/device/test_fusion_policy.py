import numpy as np
import pytest

from dcrec.device.fusion import blend, descending_order, fuse, normalise, rank_scores
from dcrec.device.policy import (
    AlwaysPolicy,
    DisagreementPolicy,
    NeverPolicy,
    PolicyInput,
    make_policy,
)
from dcrec.shared.contract import Reason


def test_rank_scores() -> None:
    assert rank_scores(np.array([0.1, 5.0, 2.0])).tolist() == [0.0, 1.0, 0.5]
    assert rank_scores(np.array([1.0, 1.0, 0.0])).tolist() == [1.0, 1.0, 0.0]
    assert rank_scores(np.array([3.0])).tolist() == [1.0]


def _rank_scores_reference(scores: np.ndarray) -> np.ndarray:
    """The first implementation of rank_scores (np.r_, np.diff, np.repeat), kept as the oracle."""
    scores = np.asarray(scores, dtype=np.float64)
    c = scores.size
    if c <= 1:
        return np.ones(c, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(c, dtype=np.float64)
    sorted_scores = scores[order]
    with np.errstate(invalid="ignore"):  # inf - inf
        first = np.r_[0, np.flatnonzero(np.diff(sorted_scores) != 0) + 1]
    ranks[order] = np.repeat(first, np.diff(np.r_[first, c]))
    return (1.0 - ranks / (c - 1)).astype(np.float32)


@pytest.mark.parametrize("kind", ["normal", "few_values", "specials", "float32_rounded"])
def test_rank_scores_matches_reference_on_random_lists(kind: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        n = int(rng.integers(0, 60))
        if kind == "normal":
            x = rng.normal(size=n)
        elif kind == "few_values":  # many ties
            x = rng.integers(0, 4, n).astype(np.float64)
        elif kind == "specials":  # infinities never tie, NaNs sort last, -0.0 ties 0.0
            x = rng.choice([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, 2.0], n)
        else:
            x = np.round(rng.normal(size=n), 1).astype(np.float32)
        want = _rank_scores_reference(x)
        assert np.array_equal(rank_scores(x), want, equal_nan=True)
        assert np.array_equal(rank_scores(x, descending_order(x)), want, equal_nan=True)


def test_blend_of_normalised_scores_is_fuse() -> None:
    rng = np.random.default_rng(4)
    cloud = np.round(rng.normal(size=50), 1).astype(np.float32)
    device = rng.normal(size=50).astype(np.float32)
    for scale in ("rank", "zscore"):
        got = blend(normalise(cloud, scale), normalise(device, scale, descending_order(device)), 0.3)
        assert np.array_equal(got, fuse(cloud, device, 0.3, scale))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        blend(cloud, device, -0.1)
    with pytest.raises(ValueError, match="shapes differ"):
        blend(cloud, device[:1], 0.5)  # never broadcast a short score vector


def test_fuse_extremes_follow_one_side() -> None:
    cloud = np.array([3.0, 2.0, 1.0])
    device = np.array([-5.0, 0.0, 9.0])
    assert np.argsort(-fuse(cloud, device, 1.0)).tolist() == [0, 1, 2]
    assert np.argsort(-fuse(cloud, device, 0.0)).tolist() == [2, 1, 0]
    # Scale does not matter, only order.
    assert np.allclose(fuse(cloud * 1000, device, 0.5), fuse(cloud, device / 7, 0.5))
    with pytest.raises(ValueError):
        fuse(cloud, device, 1.5)


def state(**kw: object) -> PolicyInput:
    base = dict(now=0.0, has_list=True, list_age_s=10.0, ttl_s=100.0, remaining=80, total=100,
                disagreement=0.1, events_since_request=1)
    base.update(kw)
    return PolicyInput(**base)  # type: ignore[arg-type]


def test_disagreement_policy_reasons() -> None:
    p = DisagreementPolicy(threshold=0.5)
    assert p.decide(state()) is None
    assert p.decide(state(disagreement=0.6)) == Reason.DISAGREEMENT
    assert p.decide(state(has_list=False)) == Reason.COLD_START
    assert p.decide(state(list_age_s=101.0)) == Reason.EXPIRED
    assert p.decide(state(remaining=10)) == Reason.CONSUMED
    with pytest.raises(ValueError):
        DisagreementPolicy(threshold=2.0)


def test_bound_policies() -> None:
    assert AlwaysPolicy().decide(state()) == Reason.PERIODIC
    assert NeverPolicy().decide(state(list_age_s=1e9, remaining=0)) is None
    assert NeverPolicy().decide(state(has_list=False)) == Reason.COLD_START
    with pytest.raises(ValueError, match="unknown request policy"):
        make_policy("sometimes")
