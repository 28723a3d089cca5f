import numpy as np
import pytest

from device.fusion import fuse, rank_scores
from device.policy import AlwaysPolicy, DisagreementPolicy, NeverPolicy, PolicyInput, make_policy
from shared.contract import Reason


def test_rank_scores() -> None:
    assert rank_scores(np.array([0.1, 5.0, 2.0])).tolist() == [0.0, 1.0, 0.5]
    assert rank_scores(np.array([1.0, 1.0, 0.0])).tolist() == [1.0, 1.0, 0.0]
    assert rank_scores(np.array([3.0])).tolist() == [1.0]


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
