"""Fusing cloud and device scores on a comparable scale, with a per-device learned weight.

Raw cloud scores (co-occurrence weights, log-probabilities) and device logits
live on different scales, so both are mapped onto one first:

* ``rank`` — ``1 - rank / (C - 1)`` in [0, 1], best item 1: only the order counts;
* ``zscore`` — each side standardised within the list (mean 0, std 1): keeps
  how *much* better one candidate is, which ranks throw away.

The fused score is ``alpha * cloud + (1 - alpha) * device``; ``alpha = 1``
keeps the cloud's order, ``alpha = 0`` the device's.

:class:`AlphaLearner` adapts ``alpha`` per device from the user's own
choices. Every time the user picks an item that was in the fused list, the
device can say how well *each* of a few candidate weights ("arms") would have
ranked it (full information, not a bandit's single pull), and exponentiated
weights (Hedge) move towards the arms that ranked the user's choices highest.
A prior centred on the configured weight keeps new devices at the default.

Example::

    fused = fuse(cloud_scores, device_scores, alpha=0.5)   # (C,)
    learner = AlphaLearner(prior_alpha=0.5)
    learner.update(cloud_scores, device_scores, chosen=3)  # index into the list
    learner.alpha                                          # the device's weight now
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcrec.shared.system import Scale as Scale  # re-exported: fusion's callers name it here


def descending_order(scores: np.ndarray) -> np.ndarray:
    """(C,) indices of ``scores`` (C,) best first; equal scores keep their list order."""
    return (-np.asarray(scores)).argsort(kind="stable")


def rank_scores(scores: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """(C,) scores -> (C,) float32 in [0, 1]: 1 for the best, 0 for the worst, ties share the better rank.

    ``order`` is :func:`descending_order` of ``scores`` when the caller already has it.
    Infinite scores never tie (as with differences, ``inf - inf`` is not 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    c = scores.size
    if c <= 1:
        return np.ones(c, dtype=np.float32)
    if order is None:
        order = descending_order(scores)
    ranked = scores[order]
    start = np.arange(c)
    # Tied scores get the best rank among them, so ties cannot reorder the list.
    tied = ranked[1:] == ranked[:-1]
    if tied.any():
        tied &= np.isfinite(ranked[1:])
        start[1:][tied] = 0
        np.maximum.accumulate(start, out=start)
    ranks = np.empty(c, dtype=np.float64)
    ranks[order] = start
    return (1.0 - ranks / (c - 1)).astype(np.float32)


def zscores(scores: np.ndarray) -> np.ndarray:
    """(C,) scores standardised within the list; a constant list maps to zeros."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.any():
        return np.zeros(s.size, dtype=np.float32)
    floor = s[finite].min()
    s = np.where(finite, s, floor)  # -inf (e.g. a masked item) becomes the list's worst
    std = s.std()
    return ((s - s.mean()) / std if std > 0 else np.zeros_like(s)).astype(np.float32)


def normalise(scores: np.ndarray, scale: Scale = "rank", order: np.ndarray | None = None) -> np.ndarray:
    """(C,) ``scores`` on the common ``scale``; ``order`` (rank only) as in :func:`rank_scores`."""
    if scale == "rank":
        return rank_scores(scores, order)
    if scale == "zscore":
        return zscores(scores)
    raise ValueError(f"unknown fusion scale {scale!r}; use rank or zscore")


def blend(cloud: np.ndarray, device: np.ndarray, alpha: float) -> np.ndarray:
    """(C,) ``alpha * cloud + (1 - alpha) * device`` of scores already :func:`normalise`-d."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cloud.shape != device.shape:
        raise ValueError(f"score shapes differ: {cloud.shape} vs {device.shape}")
    return alpha * cloud + (1.0 - alpha) * device


def fuse(cloud_scores: np.ndarray, device_scores: np.ndarray, alpha: float,
         scale: Scale = "rank") -> np.ndarray:
    """(C,) fused scores; ``alpha`` in [0, 1] is the cloud's weight."""
    return blend(normalise(cloud_scores, scale), normalise(device_scores, scale), alpha)


def member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a),) whether each of ``a`` occurs in ``b`` (integer ids): ``np.isin`` for the small
    arrays of one event, by one sort and a binary search, several times faster."""
    a = np.asarray(a)
    b = np.asarray(b)
    if b.size == 0 or a.size == 0:
        return np.zeros(a.size, dtype=bool)
    s = np.sort(b)
    return s[np.minimum(np.searchsorted(s, a), s.size - 1)] == a


def blend_lists(cached_items: np.ndarray, cached_scores: np.ndarray, local_items: np.ndarray,
                local_scores: np.ndarray, weight: float,
                cached_ranks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One cloud-side list from the cached list and a local list: their union, each item
    scored ``(1 - weight) * rank(cached) + weight * rank(local)`` on the rank scale ([0, 1],
    1 = first; an item missing from a list gets 0 from it). Cached items keep their order
    first in the result, the local list's new items follow. ``cached_ranks``:
    ``rank_scores(cached_scores)``, when the caller keeps it from event to event."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    cached_items = np.asarray(cached_items, dtype=np.int64)
    local_items = np.asarray(local_items, dtype=np.int64)
    if cached_ranks is not None:
        rc = cached_ranks
    else:
        rc = rank_scores(cached_scores) if cached_items.size else np.zeros(0, np.float32)
    rl = rank_scores(local_scores) if local_items.size else np.zeros(0, np.float32)
    new = ~member(local_items, cached_items)
    items = np.concatenate([cached_items, local_items[new]])
    scores = np.concatenate([(1.0 - weight) * rc, np.zeros(int(new.sum()), np.float32)])
    if local_items.size:  # where each local item sits in ``items``
        sorter = np.argsort(items, kind="stable")
        scores[sorter[np.searchsorted(items, local_items, sorter=sorter)]] += weight * rl
    return items, scores.astype(np.float32)


def rank_of(fused: np.ndarray, chosen: int) -> np.ndarray:
    """0-based rank of item ``chosen`` under each row of ``fused`` (A, C); ties count against it."""
    return (fused >= fused[:, chosen : chosen + 1]).sum(axis=1) - 1


@dataclass
class AlphaLearner:
    """Hedge over a few fixed cloud weights, rewarded by NDCG@k of the user's actual choices."""

    prior_alpha: float = 0.5  # where a new device starts
    arms: tuple[float, ...] = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
    eta: float = 2.0  # learning rate per unit of reward (NDCG gain in [0, 1])
    prior_strength: float = 8.0  # log-weight penalty per unit squared distance from the prior
    k: int = 10  # the choice counts when it would have been shown in the top k
    scale: Scale = "rank"
    log_w: np.ndarray = field(init=False)
    updates: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        arms = np.asarray(self.arms, dtype=np.float64)
        if arms.size < 1 or arms.min() < 0 or arms.max() > 1:
            raise ValueError("arms must be weights in [0, 1]")
        if not 0.0 <= self.prior_alpha <= 1.0:
            raise ValueError(f"prior_alpha must be in [0, 1], got {self.prior_alpha}")
        self.log_w = -self.prior_strength * (arms - self.prior_alpha) ** 2

    @property
    def alpha(self) -> float:
        """The arm with the most weight (ties: the one nearest the prior)."""
        arms = np.asarray(self.arms)
        best = np.flatnonzero(self.log_w >= self.log_w.max() - 1e-12)
        return float(arms[best[np.argmin(np.abs(arms[best] - self.prior_alpha))]])

    def update(self, cloud_scores: np.ndarray, device_scores: np.ndarray, chosen: int) -> None:
        """The user picked ``chosen`` (an index into the scored list): reward every arm."""
        c = normalise(cloud_scores, self.scale).astype(np.float64)
        d = normalise(device_scores, self.scale).astype(np.float64)
        arms = np.asarray(self.arms, dtype=np.float64)[:, None]
        ranks = rank_of(arms * c + (1 - arms) * d, chosen)
        gain = np.where(ranks < self.k, 1.0 / np.log2(ranks + 2.0), 0.0)
        self.log_w = self.log_w + self.eta * gain
        self.log_w -= self.log_w.max()  # keep the numbers small; Hedge only needs differences
        self.updates += 1

    def state(self) -> dict[str, object]:
        return {"log_w": self.log_w.tolist(), "updates": self.updates, "arms": list(self.arms)}

    def load_state(self, state: dict[str, object]) -> None:
        if list(state.get("arms", [])) != list(self.arms):  # type: ignore[call-overload]
            return  # arms changed with a new configuration: start over from the prior
        self.log_w = np.asarray(state["log_w"], dtype=np.float64)
        self.updates = int(state.get("updates", 0))  # type: ignore[call-overload]
