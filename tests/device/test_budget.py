"""The token bucket never grants more than its allowance; quantile tracking meets its target."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcrec.device.budget import BudgetExceeded, QuantileTracker, TokenBucket, random_phase


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.0, 1.0), capacity=st.floats(1.0, 5.0), initial=st.floats(0.0, 1.0),
       attempts=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_bucket_never_grants_more_than_allowance(rate: float, capacity: float, initial: float,
                                                 attempts: list[tuple[bool, bool]]) -> None:
    b = TokenBucket(rate, capacity, initial=min(initial, capacity))
    granted = 0
    for want, refund in attempts:
        b.tick()
        if want and b.try_spend():
            granted += 1
            if refund:
                b.refund()
                granted -= 1
        # The hard guarantee, at every prefix of the event stream.
        assert granted == b.granted <= b.initial + rate * b.events + 1e-9
        assert 0.0 <= b.tokens <= capacity + 1e-12


def test_bucket_rate_and_capacity() -> None:
    b = TokenBucket(rate=0.25, capacity=2.0)
    grants = []
    for _ in range(40):
        b.tick()
        grants.append(b.try_spend())
    assert sum(grants) == 10  # exactly rate * events when every chance is taken
    assert grants[:3] == [False, False, False] and grants[3]
    idle = TokenBucket(rate=0.5, capacity=2.0)
    for _ in range(100):
        idle.tick()
    assert idle.tokens == 2.0 and idle.full  # savings are capped: a burst is at most 2 requests
    assert idle.try_spend() and idle.try_spend() and not idle.try_spend()


def test_bucket_rejects_bad_settings_and_bad_refunds() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=1.5)
    with pytest.raises(ValueError):
        TokenBucket(rate=0.1, capacity=0.5)
    with pytest.raises(BudgetExceeded):
        TokenBucket(rate=0.1).refund()


def test_random_phase_is_unbiased() -> None:
    # Over many devices with short streams, floor(U + rate * n) averages rate * n.
    rate, n = 0.05, 13
    grants = [int(random_phase(s) + rate * n) for s in range(4000)]
    assert np.mean(grants) == pytest.approx(rate * n, abs=0.03)


@pytest.mark.parametrize("target", [0.05, 0.2])
def test_quantile_tracker_meets_target(target: float) -> None:
    rng = np.random.default_rng(0)
    t = QuantileTracker(target, threshold=0.0, window=1000)  # a bad prior: far below the right one
    scores = rng.beta(5, 2, 20000)
    over = np.array([t.update(float(s)) for s in scores])
    assert over[-10000:].mean() == pytest.approx(target, abs=0.02)
    assert t.threshold == pytest.approx(np.quantile(scores, 1 - target), abs=0.03)
    # It follows a shift in the scores' distribution.
    shifted = np.array([t.update(float(s)) for s in rng.beta(2, 5, 10000)])
    assert shifted[-5000:].mean() == pytest.approx(target, abs=0.02)
