"""How much two rankings of the same candidates disagree.

The device compares the cloud's order of its candidate list with its own
order of the same list; a large disagreement means the cloud's list is
probably stale. Rankings are arrays of item ids, best first.

Example::

    footrule(np.array([1, 2, 3]), np.array([3, 2, 1]))   # 1.0, maximally apart
    rank_biased_overlap(a, b, p=0.9)                       # 1.0 when identical
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Measure = Literal["footrule", "kendall", "rbo", "coverage", "regret", "uncovered"]

#: Measures that need the device model's scores over the whole catalogue, not only the list.
CATALOGUE_MEASURES = ("coverage", "regret", "uncovered")


def _positions(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``a`` and in ``b`` of the same items (``a``'s order)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"rankings must be 1-d and of equal length, got {a.shape} and {b.shape}")
    order_b = np.argsort(b, kind="stable")
    idx = np.searchsorted(b, a, sorter=order_b)
    idx = np.clip(idx, 0, len(b) - 1)
    pos_b = order_b[idx]
    if not np.array_equal(b[pos_b], a):
        raise ValueError("rankings must order the same items")
    return np.arange(len(a)), pos_b


def footrule(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's footrule distance, normalised to [0, 1] (0 = same order).

    Sum of |position in a - position in b| over items, divided by its maximum
    for n items, floor(n^2 / 2).
    """
    n = len(a)
    if n < 2:
        _positions(a, b)
        return 0.0
    pa, pb = _positions(a, b)
    return float(np.abs(pa - pb).sum() / (n * n // 2))


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau in [-1, 1]: 1 = same order, -1 = reversed. O(n^2), fine for n <= 1000."""
    n = len(a)
    if n < 2:
        _positions(a, b)
        return 1.0
    _, pb = _positions(a, b)
    d = np.sign(pb[None, :] - pb[:, None])
    iu = np.triu_indices(n, k=1)
    concordant_minus_discordant = d[iu].sum()
    return float(concordant_minus_discordant / (n * (n - 1) / 2))


def rank_biased_overlap(a: np.ndarray, b: np.ndarray, p: float = 0.9, depth: int | None = None) -> float:
    """Rank-biased overlap in [0, 1] (Webber et al. 2010), truncated and normalised.

    Weighs agreement at the top: the overlap of the first d items, weighted by
    p^(d-1), summed to ``depth`` (default: the list length) and divided by the
    weights' sum, so identical lists score exactly 1. Lists need not share items.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    a = np.asarray(a)
    b = np.asarray(b)
    depth = min(len(a), len(b)) if depth is None else min(depth, len(a), len(b))
    if depth == 0:
        return 1.0
    seen_a: set[int] = set()
    seen_b: set[int] = set()
    overlap = 0
    total = 0.0
    norm = 0.0
    w = 1.0
    for d in range(depth):
        x, y = int(a[d]), int(b[d])
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += w * overlap / (d + 1)
        norm += w
        w *= p
    return float(total / norm)


def coverage_gap(device_top: np.ndarray, cloud_list: np.ndarray) -> float:
    """Share of the device's best items (over the whole catalogue) missing from the cloud's list.

    ``device_top`` (k,) the device model's top-k item ids given the fresh
    history; ``cloud_list`` (C,) the cached candidates. 0 = the list already
    holds everything the device would pick; 1 = none of it. Unlike the rank
    measures, this sees what a stale list lacks, not only how it is ordered.
    """
    device_top = np.asarray(device_top)
    if device_top.size == 0:
        return 0.0
    return float(1.0 - np.isin(device_top, np.asarray(cloud_list)).mean())


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (..., N) ``scores / temperature``; ``-inf`` entries get probability 0.

    A temperature above 1 flattens the distribution: the regret signal then
    weighs the device model's runners-up, not only its favourite.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = np.asarray(scores, dtype=np.float64) / temperature
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def expected_regret(probs: np.ndarray, shown: np.ndarray, k: int = 10) -> float:
    """The DCG@k the shown list is expected to lose against the device model's own best list.

    ``probs`` (N+1,) the device model's next-item distribution over the whole
    catalogue (index = item id; seen items and padding at 0); ``shown`` the
    item ids the user is shown, best first. Under the device's belief the
    expected DCG@k of a list is the sum of ``p(item) / log2(position + 2)``;
    the best list is the k most probable items. The difference is in [0, 1]:
    0 when the list already holds the device's favourites in order, large
    when the device is confident about items the list misses. Unlike the
    order measures it weighs a disagreement by how predictable the user is,
    which is where a fresh list pays off.
    """
    p = np.asarray(probs, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    kk = min(k, p.size)
    best = np.sort(np.partition(p, p.size - kk)[p.size - kk:])[::-1]
    s = np.asarray(shown, dtype=np.int64)[:k]
    valid = (s > 0) & (s < p.size)  # padding or an unknown id earns nothing, keeps its slot
    got = float((p[np.where(valid, s, 0)] * valid * disc[: s.size]).sum())
    return float(np.clip((best * disc[:kk]).sum() - got, 0.0, 1.0))


def regret_of_scores(scores: np.ndarray, temperature: float, shown: np.ndarray, k: int = 10,
                     top: np.ndarray | None = None) -> float:
    """``expected_regret(softmax(scores, temperature), shown, k)``, bit for bit, for one (N+1,)
    row, without the full probability array or its partition.

    ``top``: the ids of at least ``min(k, N+1)`` of the highest ``scores`` (any order), when
    the caller has them already (e.g. from choosing the device's own candidates). Only the
    normaliser needs every item; the probabilities are formed for the top and the shown
    items alone, with the same operations as :func:`softmax`, so every value is the same.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.asarray(scores, dtype=np.float64) / temperature
    m = s.max()
    z = np.exp(s - m).sum()
    kk = min(k, s.size)
    if top is None or top.size < kk:
        top = np.argpartition(s, s.size - kk)[s.size - kk:]
    # p is monotone in s, so the kk largest p are the p of the kk largest s (ties alike)
    best_p = np.exp(s[top] - m) / z
    best = np.sort(np.partition(best_p, best_p.size - kk)[best_p.size - kk:])[::-1]
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    sh = np.asarray(shown, dtype=np.int64)[:k]
    valid = (sh > 0) & (sh < s.size)
    p_shown = np.exp(s[np.where(valid, sh, 0)] - m) / z
    got = float((p_shown * valid * disc[: sh.size]).sum())
    return float(np.clip((best * disc[:kk]).sum() - got, 0.0, 1.0))


def uncovered_mass(probs: np.ndarray, cloud_list: np.ndarray) -> float:
    """The device model's probability that the next item is not in the cloud's list.

    ``probs`` (N+1,) the device's next-item distribution over the whole catalogue
    (index = item id; consumed items and padding at 0), ``cloud_list`` the item
    ids the cloud sent (still unconsumed). ``1 - sum of p over the list``, in
    [0, 1]: near 0 when the device expects the user to stay within what the
    cloud offered, near 1 when it expects the user to leave it, which is when
    the cloud's view of the user is out of date. Unlike ``coverage`` it weighs
    each missing item by how likely the device finds it.
    """
    p = np.asarray(probs, dtype=np.float64)
    ids = np.unique(np.asarray(cloud_list, dtype=np.int64))
    ids = ids[(ids > 0) & (ids < p.size)]
    return float(np.clip(1.0 - p[ids].sum(), 0.0, 1.0))


def disagreement(a: np.ndarray, b: np.ndarray, measure: Measure = "footrule", top: int | None = None) -> float:
    """A disagreement score in [0, 1] (0 = the rankings agree) by the chosen measure.

    ``top`` restricts ``rbo`` to the first ``top`` positions; footrule and
    Kendall compare whole permutations. For ``coverage`` ``a`` is the cloud's
    list and ``b`` the device's top items over the whole catalogue (see
    :func:`coverage_gap`).
    """
    if measure == "coverage":
        return coverage_gap(b, a)
    if measure == "regret":
        raise ValueError("regret needs the device's catalogue distribution: use expected_regret")
    if measure == "footrule":
        return footrule(a, b)
    if measure == "kendall":
        return (1.0 - kendall_tau(a, b)) / 2.0
    if measure == "rbo":
        return 1.0 - rank_biased_overlap(a, b, depth=top)
    raise ValueError(f"unknown disagreement measure {measure!r}; "
                     "use footrule, kendall, rbo, coverage or regret")
