"""The two halves of a request budget: a hard cap and a self-calibrating threshold.

:class:`TokenBucket` enforces the budget: every event adds ``rate`` tokens (the
target request ratio), the bucket holds at most ``capacity``, and a request
costs one whole token. However the trigger behaves, after ``n`` events at most
``initial + rate * n`` requests were granted — a hard guarantee, checked on
every grant.

:class:`QuantileTracker` calibrates the trigger online: the threshold is the
score above which a ``target`` share of the device's own recent scores fall
(the empirical quantile of a sliding window), starting from a prior
threshold. No test set, no fleet-wide tuning.

Example::

    bucket = TokenBucket(rate=0.05, capacity=2.0)
    tracker = QuantileTracker(target=0.05, threshold=0.9)
    for score in scores:
        bucket.tick()
        over = tracker.update(score)          # was this score above the threshold?
        if over and bucket.try_spend():
            ...request...
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np


class BudgetExceeded(AssertionError):
    """Raised if the bucket's invariant breaks: a bug, never an operating condition."""


@dataclass
class TokenBucket:
    rate: float  # tokens added per event: the long-run request ratio
    capacity: float = 2.0  # most tokens held; bounds a burst of requests
    initial: float = 0.0  # tokens at start
    tokens: float = field(init=False)
    events: int = field(default=0, init=False)
    granted: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1] tokens per event, got {self.rate}")
        if self.capacity < 1.0:
            raise ValueError(f"capacity must be >= 1 token (one request), got {self.capacity}")
        if not 0.0 <= self.initial <= self.capacity:
            raise ValueError(f"initial must be in [0, capacity], got {self.initial}")
        self.tokens = float(self.initial)

    @property
    def allowance(self) -> float:
        """The most requests the budget allows so far: ``initial + rate * events``."""
        return self.initial + self.rate * self.events

    def tick(self) -> None:
        """One event happened: refill, up to ``capacity`` (overflow is lost)."""
        self.events += 1
        self.tokens = min(self.capacity, self.tokens + self.rate)

    @property
    def full(self) -> bool:
        """True when the next refill would overflow, i.e. waiting wastes budget."""
        return self.tokens + self.rate > self.capacity

    def can_spend(self) -> bool:
        return self.tokens >= 1.0

    def try_spend(self) -> bool:
        """Take one token if there is one; returns whether the request may go."""
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.granted += 1
        if self.granted > self.allowance + 1e-9:
            raise BudgetExceeded(f"{self.granted} requests granted, allowance {self.allowance:.3f}")
        return True

    def refund(self) -> None:
        """Give back the token of a request that was never sent (e.g. the client is backing off)."""
        if self.granted == 0:
            raise BudgetExceeded("refund without a grant")
        self.granted -= 1
        self.tokens = min(self.capacity, self.tokens + 1.0)


def random_phase(seed: int | None = None) -> float:
    """A start level in [0, 1): over many devices the expected grants equal ``rate * events`` exactly.

    A device whose bucket starts empty cannot request before ``1 / rate``
    events; one that starts with a full token over-spends on short streams.
    A uniform start splits the difference without bias (E[floor(U + x)] = x).
    """
    return random.Random(seed).random()


@dataclass
class QuantileTracker:
    target: float  # share of scores that should lie above the threshold
    threshold: float  # the prior: used until the device has its own scores (e.g. shipped with the model)
    window: int = 100  # the device's most recent scores the threshold is computed from
    prior_weight: int = 1  # pseudo-scores at the prior; more makes early decisions trust it longer
    recent: deque[float] = field(init=False)
    seen: int = field(default=0, init=False)
    prior: float = field(init=False)
    # ``recent`` in ascending order, kept by bisection: the quantile without a sort per event
    _sorted: list[float] = field(init=False, repr=False)
    _nonfinite: int = field(default=0, init=False, repr=False)  # NaN/inf in the window

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {self.target}")
        if self.window < 1 or self.prior_weight < 0:
            raise ValueError("window must be >= 1 and prior_weight >= 0")
        self.prior = float(self.threshold)
        self.recent = deque(maxlen=self.window)
        self._sorted = []

    def update(self, score: float) -> bool:
        """Feed one score; returns whether it lay above the threshold in force before it arrived.

        The threshold is the ``1 - target`` quantile of the window of recent
        scores plus ``prior_weight`` copies of the prior, so a new device starts
        at the prior and is calibrated by its own scores within a few events
        (a short stream never waits for a slow drift to reach the right level).
        It equals ``np.quantile`` (linear method) bit for bit, from a sorted window.
        """
        over = score > self.threshold
        x = float(score)
        if len(self.recent) == self.window:
            self._forget(self.recent[0])
        self.recent.append(x)
        self._remember(x)
        self.seen += 1
        pseudo = self.prior_weight if len(self.recent) < self.window else 0
        if self._nonfinite:
            values = np.fromiter([*self.recent, *[self.prior] * pseudo], dtype=np.float64)
            self.threshold = float(np.quantile(values, 1.0 - self.target))
        else:
            values_sorted = self._sorted
            if pseudo:
                values_sorted = values_sorted.copy()
                for _ in range(pseudo):
                    bisect.insort(values_sorted, self.prior)
            self.threshold = _linear_quantile(values_sorted, 1.0 - self.target)
        return over

    def _remember(self, x: float) -> None:
        if math.isfinite(x):
            bisect.insort(self._sorted, x)
        else:
            self._nonfinite += 1

    def _forget(self, x: float) -> None:
        if math.isfinite(x):
            del self._sorted[bisect.bisect_left(self._sorted, x)]
        else:
            self._nonfinite -= 1

    def state(self) -> dict[str, object]:
        return {"threshold": self.threshold, "recent": list(self.recent), "seen": self.seen}

    def load_state(self, state: dict[str, object]) -> None:
        self.threshold = float(state["threshold"])  # type: ignore[arg-type]
        self.recent = deque((float(x) for x in state["recent"]), maxlen=self.window)  # type: ignore[attr-defined]
        self.seen = int(state["seen"])  # type: ignore[call-overload]
        self._sorted, self._nonfinite = [], 0
        for x in self.recent:
            self._remember(x)


def _linear_quantile(values: list[float], q: float) -> float:
    """``np.quantile(values, q)`` (method ``linear``) of ascending, finite ``values``, computed
    with numpy's own operations in the same order, so the result is identical."""
    n = len(values)
    virtual = (n - 1) * q
    below = math.floor(virtual)
    if virtual >= n - 1:
        return values[-1]
    a, b = values[below], values[below + 1]
    gamma = virtual - below
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
