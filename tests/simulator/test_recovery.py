"""Recovery spreading: after failures, attempts wait a random share of the outage seen so far."""

from __future__ import annotations

import random

from dcrec.device.policy import AlwaysPolicy, PolicyInput
from dcrec.shared.contract import Reason
from dcrec.simulator.recovery import RecoverySpread


def _state(now: float) -> PolicyInput:
    return PolicyInput(now=now, has_list=True, list_age_s=1.0, ttl_s=100.0, remaining=50, total=100,
                       disagreement=0.0, events_since_request=3)


def test_passes_through_until_a_failure() -> None:
    p = RecoverySpread(AlwaysPolicy(), rng=random.Random(0))
    assert p.name == "always" and p.decide(_state(0.0)) == Reason.PERIODIC


def test_retries_spread_over_the_outage_seen() -> None:
    first_retry = []
    for seed in range(300):
        p = RecoverySpread(AlwaysPolicy(), rng=random.Random(seed), min_window_s=5.0)
        for t in range(0, 31, 3):  # failing every 3 s for 30 s
            p.failed(float(t))
        t = 30.0
        while p.decide(_state(t)) is None:
            t += 0.5
        first_retry.append(t - 30.0)
        p.succeeded(t)
        assert p.decide(_state(t)) == Reason.PERIODIC  # back to normal once a call succeeds
    # Spread over roughly the 30 s outage, not bunched at its end.
    assert 8.0 < sum(first_retry) / len(first_retry) < 22.0
    assert max(first_retry) > 20.0 and min(first_retry) < 3.0


def test_the_wrapped_policy_keeps_its_feedback_and_state() -> None:
    class Budget:
        name = "budget"

        def __init__(self) -> None:
            self.seen: list[tuple[Reason, bool, bool]] = []

        def decide(self, s: PolicyInput) -> Reason | None:
            return Reason.DISAGREEMENT

        def observe(self, reason: Reason, sent: bool, ok: bool) -> None:
            self.seen.append((reason, sent, ok))

        def state(self) -> dict[str, float]:
            return {"tokens": 1.5}

    base = Budget()
    p = RecoverySpread(base, rng=random.Random(0))
    p.observe(Reason.DISAGREEMENT, True, False)  # type: ignore[attr-defined]
    assert base.seen == [(Reason.DISAGREEMENT, True, False)]
    assert p.state() == {"tokens": 1.5} and p.name == "budget"  # type: ignore[attr-defined]
    assert not hasattr(RecoverySpread(AlwaysPolicy()), "state")
