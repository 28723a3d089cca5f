"""When should the device ask the cloud for a new list?

A :class:`RequestPolicy` looks at the state after each event and returns the
reason to request, or ``None``. A policy may also implement
:class:`RequestFeedback`; the runtime then tells it whether the request it
asked for was really sent (a client that is backing off sends nothing).

Unbudgeted policies (request whenever their trigger fires):

* :class:`DisagreementPolicy` — a fixed disagreement threshold, plus the
  shared housekeeping (cold start, TTL expiry, consumed list);
* :class:`AlwaysPolicy` — every event (the accuracy upper bound);
* :class:`NeverPolicy` — nothing after the first list, not even expiry.

Budgeted policies (:mod:`dcrec.device.budget`: a token bucket refilled by
``target_ratio`` tokens per event caps the requests hard):

* :class:`BudgetedPolicy` — requests when the disagreement
  between the cloud's and the device's ranking exceeds a threshold that
  tracks the device's own score quantile, so about ``target_ratio`` of events
  trigger; also when the list expired or is mostly consumed, and when the
  bucket is full (a token left unused would be lost);
* :class:`LearnedPolicy` — the system's policy (:mod:`dcrec.shared.system`): the same
  budget spent on the events whose predicted gain (the release's request-value model,
  :mod:`dcrec.shared.request_value`) is highest;
  without a model it behaves as :class:`BudgetedPolicy` and says so in the log;
* :class:`RandomPolicy` — requests at random events, same budget;
* :class:`PeriodicPolicy` — every ``1 / target_ratio`` events, same budget.

Budget rules, the same for all three: every request costs one token,
housekeeping (EXPIRED, CONSUMED) included, so the cap holds whatever
triggers it; only COLD_START (no list at all, nothing to show) is free, and a
device has at most one cold start per successful list. A request the client
never sent gets its token back; a sent request that failed keeps it spent
(it cost the network), and the client's back-off stops a retry storm.

Example::

    policy = make_policy("budgeted", target_ratio=0.05)
    reason = policy.decide(state)   # Reason.DISAGREEMENT, Reason.EXPIRED, ... or None
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dcrec.device.budget import QuantileTracker, TokenBucket, random_phase
from dcrec.shared.contract import Reason
from dcrec.shared.system import POLICY_NAMES, SYSTEM, SYSTEM_POLICY, PolicySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyInput:
    now: float  # seconds, the device's clock
    has_list: bool
    list_age_s: float
    ttl_s: float
    remaining: int  # cached candidates the user has not consumed yet
    total: int  # candidates in the cached list
    disagreement: float  # in [0, 1]; 0 = device and cloud agree
    events_since_request: int
    # The release's request-value model's prediction of what a fresh list gains now
    # (NDCG@10; dcrec.shared.request_value); None when the runtime holds no such model.
    value: float | None = None


class RequestPolicy(Protocol):
    name: str

    def decide(self, state: PolicyInput) -> Reason | None:
        """The reason to request now, or None to keep the cached list. Called once per event."""
        ...


@runtime_checkable
class RequestFeedback(Protocol):
    def observe(self, reason: Reason, sent: bool, ok: bool) -> None:
        """What became of the request :meth:`RequestPolicy.decide` asked for."""
        ...


@dataclass
class Housekeeping:
    """The triggers every real policy shares: no list, expired list, consumed list."""

    min_remaining_fraction: float = 0.2  # below this share of unconsumed candidates, refresh
    honour_ttl: bool = True

    def decide(self, s: PolicyInput) -> Reason | None:
        if not s.has_list:
            return Reason.COLD_START
        if self.honour_ttl and s.list_age_s > s.ttl_s:
            return Reason.EXPIRED
        if s.total and s.remaining < self.min_remaining_fraction * s.total:
            return Reason.CONSUMED
        return None


@dataclass
class DisagreementPolicy:
    threshold: float = 0.95  # request when disagreement exceeds this (rbo: lists share little of their top)
    housekeeping: Housekeeping = field(default_factory=Housekeeping)
    name: str = "disagreement"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")

    def decide(self, s: PolicyInput) -> Reason | None:
        reason = self.housekeeping.decide(s)
        if reason is not None:
            return reason
        if s.disagreement > self.threshold:
            return Reason.DISAGREEMENT
        return None


@dataclass
class AlwaysPolicy:
    name: str = "always"

    def decide(self, s: PolicyInput) -> Reason | None:
        return Reason.COLD_START if not s.has_list else Reason.PERIODIC


@dataclass
class NeverPolicy:
    name: str = "never"

    def decide(self, s: PolicyInput) -> Reason | None:
        return Reason.COLD_START if not s.has_list else None


@dataclass
class _Budgeted:
    """Shared machinery: housekeeping and the bucket; subclasses supply :meth:`_trigger`."""

    target_ratio: float = 0.05  # requests per event in the long run; the bucket's refill rate
    capacity: float = 2.0  # tokens; the largest burst, and how long savings can wait
    seed: int | None = None  # for the bucket's random start level (and random triggers)
    housekeeping: Housekeeping = field(default_factory=Housekeeping)
    spend_when_full: bool = True  # use a token that the next refill would waste
    # Triggers aim at boost * target_ratio of events: more often than tokens
    # arrive, so the bucket (not a trigger that happens to fire when it is empty)
    # sets the ratio, and tokens rarely pile up to be spent on low-value events.
    boost: float = 4.0
    # Events a whole token may wait for its trigger before it is spent anyway: a short
    # stream must not end with budget unused (the ratio would fall short of the target).
    max_wait: int | None = None  # None: the mean gap between triggers, 1 / (boost * target_ratio)
    _waited: int = field(default=0, init=False)
    bucket: TokenBucket = field(init=False)
    _pending: Reason | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_ratio <= 1.0:
            raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio}")
        if self.boost < 1.0:
            raise ValueError(f"boost must be >= 1, got {self.boost}")
        self.bucket = TokenBucket(self.target_ratio, self.capacity,
                                  initial=min(random_phase(self.seed), self.capacity))

    @property
    def patience(self) -> int:
        if self.max_wait is not None:
            return self.max_wait
        return max(1, round(1.0 / self.trigger_ratio))

    @property
    def trigger_ratio(self) -> float:
        """The share of events the trigger aims to fire on."""
        return min(self.target_ratio * self.boost, 0.99)

    def _trigger(self, s: PolicyInput) -> Reason | None:
        raise NotImplementedError

    def decide(self, s: PolicyInput) -> Reason | None:
        self.bucket.tick()
        self._pending = None
        chore = self.housekeeping.decide(s)
        if chore is Reason.COLD_START:
            return chore  # free: a device with no list has nothing to show
        trigger = self._trigger(s)  # always evaluated, so calibration sees every event
        reason = chore or trigger
        self._waited = self._waited + 1 if self.bucket.can_spend() else 0
        if reason is None and self.spend_when_full and (self.bucket.full or self._waited > self.patience):
            reason = Reason.PERIODIC
        if reason is None or not self.bucket.try_spend():
            return None
        self._pending = reason
        return reason

    def observe(self, reason: Reason, sent: bool, ok: bool) -> None:
        if not sent and self._pending is not None and reason == self._pending:
            self.bucket.refund()
        self._pending = None

    def state(self) -> dict[str, float]:
        """What must survive a restart: a fresh bucket would hand out tokens twice."""
        b = self.bucket
        return {"tokens": b.tokens, "initial": b.initial, "events": b.events, "granted": b.granted}

    def load_state(self, state: dict[str, float]) -> None:
        b = self.bucket
        b.initial = min(float(state["initial"]), b.capacity)
        b.events, b.granted = int(state["events"]), int(state["granted"])
        b.tokens = min(float(state["tokens"]), b.capacity)


@dataclass
class BudgetedPolicy(_Budgeted):
    threshold: float = 0.95  # prior disagreement threshold; tracking moves it from here
    window: int = 100  # recent scores the threshold is the quantile of
    name: str = "budgeted"
    tracker: QuantileTracker = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tracker = QuantileTracker(self.trigger_ratio, self.threshold, self.window)

    def _trigger(self, s: PolicyInput) -> Reason | None:
        if not s.has_list:
            return None
        return Reason.DISAGREEMENT if self.tracker.update(s.disagreement) else None

    def state(self) -> dict[str, object]:  # type: ignore[override]
        return {**super().state(), "tracker": self.tracker.state()}

    def load_state(self, state: dict[str, object]) -> None:  # type: ignore[override]
        super().load_state(state)  # type: ignore[arg-type]
        if "tracker" in state:
            self.tracker.load_state(state["tracker"])  # type: ignore[arg-type]


@dataclass
class LearnedPolicy(BudgetedPolicy):
    """Requests when the predicted gain of a fresh list is in the top ``trigger_ratio`` of this
    device's recent predictions (an online quantile, as :class:`BudgetedPolicy` tracks the
    disagreement), under the same bucket. The runtime computes the prediction only for a policy
    that sets ``wants_value``; with no request model in the release (``value`` None) the policy
    falls back to the disagreement threshold and logs it once."""

    name: str = "learned"
    wants_value: bool = True
    value_prior: float = 0.0  # predicted gain a new device's threshold starts from
    value_tracker: QuantileTracker = field(init=False)
    _fallback_logged: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.value_tracker = QuantileTracker(self.trigger_ratio, self.value_prior, self.window)

    def _trigger(self, s: PolicyInput) -> Reason | None:
        if not s.has_list:
            return None
        if s.value is None:
            if not self._fallback_logged:
                log.warning("learned request policy: the installed release has no usable request "
                            "model; falling back to the budgeted (disagreement) policy")
                self._fallback_logged = True
            return super()._trigger(s)
        if self._fallback_logged:
            log.info("learned request policy: request model available again; using it")
            self._fallback_logged = False
        return Reason.DISAGREEMENT if self.value_tracker.update(s.value) else None

    def state(self) -> dict[str, object]:
        return {**super().state(), "value_tracker": self.value_tracker.state()}

    def load_state(self, state: dict[str, object]) -> None:
        super().load_state(state)
        if "value_tracker" in state:
            self.value_tracker.load_state(state["value_tracker"])  # type: ignore[arg-type]


@dataclass
class RandomPolicy(_Budgeted):
    name: str = "random"
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._rng = random.Random(None if self.seed is None else self.seed + 1)

    def _trigger(self, s: PolicyInput) -> Reason | None:
        return Reason.RANDOM if self._rng.random() < self.trigger_ratio else None


@dataclass
class PeriodicPolicy(_Budgeted):
    name: str = "periodic"

    def _trigger(self, s: PolicyInput) -> Reason | None:
        due = s.events_since_request >= round(1.0 / self.target_ratio)
        return Reason.PERIODIC if due else None


# Every policy by name: what make_policy, the CLI, the simulator and scenario files accept.
# A new policy is its class and one line here.
_FACTORIES: dict[str, Callable[[float, float, int | None, float], RequestPolicy]] = {
    "disagreement": lambda threshold, ratio, seed, capacity: DisagreementPolicy(threshold=threshold),
    "always": lambda threshold, ratio, seed, capacity: AlwaysPolicy(),
    "never": lambda threshold, ratio, seed, capacity: NeverPolicy(),
    "budgeted": lambda threshold, ratio, seed, capacity: BudgetedPolicy(
        target_ratio=ratio, capacity=capacity, seed=seed, threshold=threshold),
    "learned": lambda threshold, ratio, seed, capacity: LearnedPolicy(
        target_ratio=ratio, capacity=capacity, seed=seed, threshold=threshold),
    "random": lambda threshold, ratio, seed, capacity: RandomPolicy(
        target_ratio=ratio, capacity=capacity, seed=seed),
    "periodic": lambda threshold, ratio, seed, capacity: PeriodicPolicy(
        target_ratio=ratio, capacity=capacity, seed=seed),
}
POLICIES = tuple(_FACTORIES)
if set(POLICIES) != set(POLICY_NAMES):  # the system's settings name policies without importing them
    raise AssertionError(f"dcrec.shared.system.POLICY_NAMES {POLICY_NAMES} != the policies here {POLICIES}")
# What a command line, a scenario or a fleet may name: every policy, and "system" (the
# system's own policy, at its budget; dcrec.shared.system).
POLICY_CHOICES = (SYSTEM_POLICY, *POLICIES)


def make_policy(name: str, threshold: float = 0.95, target_ratio: float = 0.05,
                seed: int | None = None, capacity: float = 2.0) -> RequestPolicy:
    """Policy by name: one of :data:`POLICIES`.

    ``threshold`` is the fixed threshold of ``disagreement`` and the prior of
    ``budgeted``; ``target_ratio``, ``capacity`` and ``seed`` configure the
    budgeted ones (``seed``: per device, for reproducible runs).
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown request policy {name!r}; choose one of {', '.join(POLICIES)}")
    return factory(threshold, target_ratio, seed, capacity)


def policy_of(settings: PolicySettings | None = None, seed: int | None = None) -> RequestPolicy:
    """The policy ``settings`` describe (the system's section ``[policy]``; None: the built-in
    system's): its name at its budget, bucket and threshold."""
    p = settings or SYSTEM.policy
    return make_policy(p.name, threshold=p.threshold, target_ratio=p.target_ratio, seed=seed,
                       capacity=p.capacity)


def resolve_policy(name: str, settings: PolicySettings | None = None, threshold: float | None = None,
                   seed: int | None = None) -> RequestPolicy:
    """A policy by one of :data:`POLICY_CHOICES`: ``system`` is :func:`policy_of` ``settings``; any
    other name is that policy at the system's budget (``threshold`` overrides its threshold)."""
    p = settings or SYSTEM.policy
    if name == SYSTEM_POLICY:
        return policy_of(p, seed)
    return make_policy(name, threshold=p.threshold if threshold is None else threshold,
                       target_ratio=p.target_ratio, seed=seed, capacity=p.capacity)
