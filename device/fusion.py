"""Fusing cloud and device scores on a comparable scale.

Raw cloud scores (co-occurrence weights, log-probabilities) and device logits
live on different scales, so both are mapped onto one first:

* ``rank`` — ``1 - rank / (C - 1)`` in [0, 1], best item 1: only the order counts;
* ``zscore`` — each side standardised within the list (mean 0, std 1): keeps
  how *much* better one candidate is, which ranks throw away.

The fused score is ``alpha * cloud + (1 - alpha) * device``; ``alpha = 1``
keeps the cloud's order, ``alpha = 0`` the device's.

Example::

    fused = fuse(cloud_scores, device_scores, alpha=0.5)   # (C,)
"""

from __future__ import annotations

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
