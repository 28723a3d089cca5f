"""Spreading retries after an outage, as a :class:`~dcrec.device.policy.RequestPolicy` wrapper.

The cloud client already backs off with full jitter after each failure, but a
device only tries again when an event asks for a list, so after a long outage
most devices of a fleet have a small back-off and a pending reason to ask:
they all ask at their next event, right after the cloud comes back (a
thundering herd). :class:`RecoverySpread` adds a second, outage-aware delay:
after a failed call the next attempt waits a uniform random time over a
window as long as the device has seen the cloud unreachable (clamped to
``[min_window_s, max_window_s]``). A fleet that saw a 30 s outage thus comes
back over about 30 s instead of at once; a device that never saw a failure is
not affected.

The client reports outcomes through :meth:`failed` / :meth:`succeeded`; the
runtime calls :meth:`decide`, and whatever else the wrapped policy offers
(feedback on sent requests, state to persist) reaches it unchanged.

Example::

    policy = RecoverySpread(make_policy("disagreement"), rng=random.Random(7))
    client_hook = policy    # call policy.failed(now) / policy.succeeded(now) per call outcome
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dcrec.device.policy import PolicyInput, RequestPolicy
from dcrec.shared.contract import Reason


@dataclass
class RecoverySpread:
    base: RequestPolicy
    rng: random.Random = field(default_factory=random.Random)
    min_window_s: float = 5.0  # even a short outage spreads the return over a few seconds
    max_window_s: float = 300.0  # never hold a device back longer than this after one failure
    down_since: float | None = None  # simulated time of the first failure of the current outage
    not_before: float = 0.0
    deferred: int = 0  # requests this wrapper held back
    name: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_window_s <= self.max_window_s:
            raise ValueError("need 0 <= min_window_s <= max_window_s")
        self.name = self.name or self.base.name

    def decide(self, state: PolicyInput) -> Reason | None:
        reason = self.base.decide(state)
        if reason is None or self.down_since is None or state.now >= self.not_before:
            return reason
        self.deferred += 1
        return None

    def __getattr__(self, attr: str) -> object:
        """Everything else is the wrapped policy's (feedback, persisted state, budget)."""
        if attr == "base":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def failed(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
        window = min(max(now - self.down_since, self.min_window_s), self.max_window_s)
        self.not_before = now + self.rng.uniform(0.0, window)

    def succeeded(self, now: float) -> None:
        self.down_since = None
        self.not_before = 0.0
