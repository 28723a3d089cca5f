"""When should the device ask the cloud for a new list?

A :class:`RequestPolicy` looks at the state after each event and returns the
reason to request, or ``None``. Every policy requests on cold start (no list),
on expiry (TTL) and when the list is mostly consumed; they differ in what
else triggers a request:

* :class:`DisagreementPolicy` — the device's ranking of the cached candidates
  has drifted from the cloud's by more than a threshold;
* :class:`AlwaysPolicy` — every event (the accuracy upper bound);
* :class:`NeverPolicy` — nothing after the first list, not even expiry
  (the lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from shared.contract import Reason


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


class RequestPolicy(Protocol):
    name: str

    def decide(self, state: PolicyInput) -> Reason | None:
        """The reason to request now, or None to keep the cached list."""
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


def make_policy(name: str, threshold: float = 0.95) -> RequestPolicy:
    """Policy by name: ``disagreement``, ``always``, ``never``."""
    if name == "disagreement":
        return DisagreementPolicy(threshold=threshold)
    if name == "always":
        return AlwaysPolicy()
    if name == "never":
        return NeverPolicy()
    raise ValueError(f"unknown request policy {name!r}; choose disagreement, always or never")
