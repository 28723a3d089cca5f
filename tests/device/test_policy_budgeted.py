"""Budgeted, random and periodic policies: reasons, the hard cap, refunds, restarts."""

import numpy as np
import pytest

from dcrec.device.policy import (
    BudgetedPolicy,
    PeriodicPolicy,
    PolicyInput,
    RandomPolicy,
    RequestFeedback,
    make_policy,
)
from dcrec.shared.contract import Reason


def state(**kw: object) -> PolicyInput:
    base = dict(now=0.0, has_list=True, list_age_s=10.0, ttl_s=100.0, remaining=80, total=100,
                disagreement=0.1, events_since_request=1)
    base.update(kw)
    return PolicyInput(**base)  # type: ignore[arg-type]


def run(policy, scores, **kw):  # type: ignore[no-untyped-def]
    out = []
    for s in scores:
        r = policy.decide(state(disagreement=float(s), **kw))
        if r is not None:
            policy.observe(r, True, True)
        out.append(r)
    return out


@pytest.mark.parametrize("name", ["budgeted", "random", "periodic"])
def test_budget_is_never_exceeded(name: str) -> None:
    rng = np.random.default_rng(1)
    for seed in range(20):
        p = make_policy(name, target_ratio=0.05, seed=seed)
        # Every event also says the list expired: the strongest possible pressure to request.
        reasons = run(p, rng.random(400), list_age_s=1e9)
        sent = np.cumsum([r is not None for r in reasons])
        allowance = p.bucket.initial + 0.05 * np.arange(1, 401)  # type: ignore[attr-defined]
        assert (sent <= allowance + 1e-9).all()
        assert sent[-1] >= 19  # and the budget is used, not hoarded
        assert {r for r in reasons if r is not None} == {Reason.EXPIRED}


def test_budgeted_requests_on_high_disagreement_at_the_target_ratio() -> None:
    rng = np.random.default_rng(0)
    p = BudgetedPolicy(target_ratio=0.1, seed=0, threshold=0.5)
    scores = rng.random(5000)
    reasons = run(p, scores)
    picked = np.array([r is not None for r in reasons])
    assert picked.mean() == pytest.approx(0.1, abs=0.01)
    dis = np.array([r == Reason.DISAGREEMENT for r in reasons])
    # Requests go to the events with the most disagreement.
    assert scores[dis].mean() > 0.75 and dis.sum() > 0.75 * picked.sum()  # random picks average 0.5
    # The trigger aims at boost * 10 % = 40 % of events: the 60th percentile.
    assert abs(p.tracker.threshold - 0.6) < 0.1


def test_housekeeping_reasons_and_free_cold_start() -> None:
    p = BudgetedPolicy(target_ratio=0.5, seed=3, spend_when_full=False)
    assert p.decide(state(has_list=False)) == Reason.COLD_START
    assert p.bucket.granted == 0  # cold start costs nothing
    for _ in range(4):
        p.decide(state())
    assert p.decide(state(remaining=5)) == Reason.CONSUMED
    p.decide(state())
    p.decide(state())
    assert p.decide(state(list_age_s=101.0)) == Reason.EXPIRED


def test_unsent_request_gets_its_token_back() -> None:
    p = BudgetedPolicy(target_ratio=1.0, capacity=1.0, seed=0)
    assert isinstance(p, RequestFeedback)
    r = p.decide(state(disagreement=1.0, list_age_s=1e9))
    assert r == Reason.EXPIRED and p.bucket.granted == 1
    p.observe(r, sent=False, ok=False)  # the client was backing off
    assert p.bucket.granted == 0 and p.bucket.tokens == 1.0
    r = p.decide(state(list_age_s=1e9))
    p.observe(r, sent=True, ok=False)  # sent but failed: the token stays spent
    assert p.bucket.granted == 1


def test_random_and_periodic_triggers() -> None:
    r = RandomPolicy(target_ratio=0.2, seed=5)
    reasons = run(r, np.zeros(2000))
    assert sum(x is not None for x in reasons) / 2000 == pytest.approx(0.2, abs=0.03)
    assert sum(x == Reason.RANDOM for x in reasons) > 0.8 * sum(x is not None for x in reasons)
    per = PeriodicPolicy(target_ratio=0.25, seed=0)
    for _ in range(8):
        per.decide(state(events_since_request=1))
    assert per.decide(state(events_since_request=3)) is None
    assert per.decide(state(events_since_request=4)) == Reason.PERIODIC


def test_state_survives_a_restart() -> None:
    a = BudgetedPolicy(target_ratio=0.05, seed=1)
    run(a, np.linspace(0, 1, 300))
    b = BudgetedPolicy(target_ratio=0.05, seed=99)
    b.load_state(a.state())
    assert b.bucket.tokens == a.bucket.tokens and b.bucket.granted == a.bucket.granted
    assert b.tracker.threshold == a.tracker.threshold


def test_make_policy_names() -> None:
    for name in ["disagreement", "always", "never", "budgeted", "random", "periodic"]:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="target_ratio"):
        make_policy("budgeted", target_ratio=0.0)
