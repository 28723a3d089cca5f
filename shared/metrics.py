"""Top-K ranking metrics over the full catalogue, vectorised.

Everything starts from 0-based ranks of the target: rank 0 is the top of the
list. A negative rank means a miss (the target is not in the list at all), and
counts as zero for every metric, as the protocol demands.

Example::

    ranks = ranks_from_scores(scores, targets)       # (B,) from (B, N+1) scores
    summarize(ranks)   # {'HR@5': ..., 'NDCG@10': ..., 'MRR': ...}
"""

from __future__ import annotations

import numpy as np

MISS = -1
DEFAULT_KS = (5, 10, 20)


def ranks_from_scores(
    scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """0-based rank of each target among all items.

    ``scores`` (B, N+1) with column 0 the padding id (ignored), ``targets`` (B,),
    ``exclude`` optional (B, N+1) bool of items removed from ranking (e.g. already
    seen). Ties count against the target: rank = number of other items whose
    score is >= the target's, which a constant scorer cannot game.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} do not match")
    rows = np.arange(scores.shape[0])
    scores[:, 0] = -np.inf
    if exclude is not None:
        exclude = exclude.copy()
        exclude[rows, targets] = False  # the target itself is never excluded
        scores[exclude] = -np.inf
    t = scores[rows, targets]
    ahead = (scores >= t[:, None]).sum(axis=1) - 1  # minus the target itself
    return ahead.astype(np.int64)


def ranks_in_lists(lists: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its ranked list, or ``MISS``.

    ``lists`` (B, C) item ids best first (padding 0 or negative never matches
    a real target), ``targets`` (B,).
    """
    lists = np.asarray(lists)
    targets = np.asarray(targets)
    if lists.ndim != 2 or targets.shape != (lists.shape[0],):
        raise ValueError(f"lists {lists.shape} and targets {targets.shape} do not match")
    hit = lists == targets[:, None]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1), MISS).astype(np.int64)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of targets ranked in the top ``k``."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0
    return float(((ranks >= 0) & (ranks < k)).mean())


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top k, else 0."""
    ranks = np.asarray(ranks)
    inside = (ranks >= 0) & (ranks < k)
    return np.where(inside, 1.0 / np.log2(np.where(inside, ranks, 0) + 2.0), 0.0)


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item (:func:`ndcg_gains`)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0
    return float(ndcg_gains(ranks, k).mean())


def mrr(ranks: np.ndarray, k: int | None = None) -> float:
    """Mean reciprocal rank, optionally cut at ``k``."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0
    inside = ranks >= 0
    if k is not None:
        inside &= ranks < k
    return float(np.where(inside, 1.0 / (np.where(inside, ranks, 0) + 1.0), 0.0).mean())


def summarize(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """HR@k and NDCG@k for each k, plus MRR, as one flat dict."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate(ranks, k)
    for k in ks:
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    out["MRR"] = mrr(ranks)
    return out
