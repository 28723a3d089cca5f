"""Fusing cloud and device scores on a comparable scale.

Raw cloud scores (co-occurrence weights, log-probabilities) and device logits
live on different scales, so both are mapped to ranks first:
``rank_score = 1 - rank / (C - 1)`` in [0, 1], best item 1. The fused score is
``alpha * cloud + (1 - alpha) * device``; ``alpha = 1`` keeps the cloud's order,
``alpha = 0`` the device's.

Example::

    fused = fuse(cloud_scores, device_scores, alpha=0.5)   # (C,)
    order = np.argsort(-fused, kind="stable")
"""

from __future__ import annotations

import numpy as np


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """(C,) scores -> (C,) float32 in [0, 1]: 1 for the best, 0 for the worst, ties share the better rank."""
    scores = np.asarray(scores, dtype=np.float64)
    c = scores.size
    if c <= 1:
        return np.ones(c, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(c, dtype=np.float64)
    ranks[order] = np.arange(c)
    # Tied scores get the best rank among them, so ties cannot reorder the list.
    sorted_scores = scores[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_scores) != 0) + 1]
    group_start = np.repeat(first, np.diff(np.r_[first, c]))
    ranks[order] = group_start
    return (1.0 - ranks / (c - 1)).astype(np.float32)


def fuse(cloud_scores: np.ndarray, device_scores: np.ndarray, alpha: float) -> np.ndarray:
    """(C,) fused scores; ``alpha`` in [0, 1] is the cloud's weight."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cloud_scores.shape != device_scores.shape:
        raise ValueError(f"score shapes differ: {cloud_scores.shape} vs {device_scores.shape}")
    return alpha * rank_scores(cloud_scores) + (1.0 - alpha) * rank_scores(device_scores)
