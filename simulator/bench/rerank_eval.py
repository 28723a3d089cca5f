"""The reranking task offline, on the device-cloud split: every variant of the system side by side.

For each test user the cloud's list is built twice: from the stale history
the cloud last saw (``cloud_histories``) and from the device's fresh one (what
a request gets). The device reranks with its fresh history; the items it has
already seen are removed from the stale list, as the runtime does. Variants:

* ``cloud stale`` / ``cloud fresh`` — the cloud's own order;
* ``device rerank`` — the device model alone over the stale list;
* ``fusion, no requests`` — the fused order of the stale list;
* ``always fresh`` — fused order of a fresh list for everyone (the upper bound);
* ``random r`` / ``budgeted r`` — a fresh list for the users a policy picks.

The budgeted variant runs the device's own policy parts over the test users in
a random order, one decision per user (LSC4Rec's request ratio: the share of
users refreshed): a :class:`~dcrec.device.budget.QuantileTracker` calibrates the
disagreement threshold online from the users seen so far (never from the test
outcomes) and a :class:`~dcrec.device.budget.TokenBucket` refilled ``r`` tokens per
user caps the requests hard. Here the budget is the fleet's, because each
test user has only one decision to make; on real devices each has its own.

Example::

    lists = build_lists(generator, split.test, count=100)
    table = evaluate(lists, scorer, alpha=0.5, ratios=(0.05, 0.2))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.device.budget import QuantileTracker, TokenBucket
from dcrec.device.fusion import Scale
from dcrec.shared.agreement import Measure, disagreement
from dcrec.shared.data import pad_left
from dcrec.shared.metrics import ranks_in_lists, summarize
from dcrec.shared.splits import EvalSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineLists:
    """M users: ``hist`` (M, L) fresh device histories, lists (M, C) 0-padded with scores (M, C)."""

    hist: np.ndarray
    stale: np.ndarray
    stale_scores: np.ndarray
    fresh: np.ndarray
    fresh_scores: np.ndarray
    targets: np.ndarray


def _pack(lists: list, count: int, seen: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    items = np.zeros((len(lists), count), dtype=np.int64)
    scores = np.full((len(lists), count), -np.inf, dtype=np.float32)
    for i, c in enumerate(lists):
        keep = ~np.isin(c.items, seen[i]) if seen is not None else np.ones(c.items.size, bool)
        it, sc = c.items[keep][:count], c.scores[keep][:count]
        items[i, : it.size], scores[i, : sc.size] = it, sc
    return items, scores


def build_lists(generator: CandidateGenerator, test: EvalSet, count: int = 100,
                max_len: int = 50, chunk: int = 2048) -> OfflineLists:
    """The stale and fresh cloud lists of every test user (the expensive part: cache the result)."""
    stale_i, stale_s, fresh_i, fresh_s = [], [], [], []
    for lo in range(0, len(test), chunk):
        part = test.take(np.arange(lo, min(lo + chunk, len(test))))
        # Items the device saw after the cloud's view must not be shown again.
        new = [h[len(c):] for h, c in zip(part.histories, part.cloud_histories, strict=True)]
        extra = max((n.size for n in new), default=0)
        i, s = _pack(generator.generate(part.cloud_histories, count + extra), count, new)
        stale_i.append(i), stale_s.append(s)
        i, s = _pack(generator.generate(part.histories, count), count, None)
        fresh_i.append(i), fresh_s.append(s)
    return OfflineLists(pad_left(test.histories, max_len), np.concatenate(stale_i),
                        np.concatenate(stale_s), np.concatenate(fresh_i), np.concatenate(fresh_s),
                        np.asarray(test.targets))


def _normalise_rows(scores: np.ndarray, valid: np.ndarray, scale: Scale) -> np.ndarray:
    """Row-wise :func:`~dcrec.device.fusion.normalise` of (M, C) scores over the ``valid`` slots.

    Ranks break ties by position (the runtime lets ties share the better rank;
    on cloud lists, which arrive sorted, the two agree on the order).
    """
    s = np.where(valid, scores, -np.inf).astype(np.float64)
    n = valid.sum(axis=1, keepdims=True)
    if scale == "rank":
        order = np.argsort(-s, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(s.shape[1])[None, :].repeat(s.shape[0], 0), axis=1)
        return np.where(valid, 1.0 - ranks / np.maximum(n - 1, 1), -np.inf)
    if scale == "zscore":
        z = np.where(valid, s, 0.0)
        mean = z.sum(axis=1, keepdims=True) / np.maximum(n, 1)
        var = (np.where(valid, s - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / np.maximum(n, 1)
        std = np.sqrt(var)
        return np.where(valid, (s - mean) / np.where(std > 0, std, 1.0), -np.inf)
    raise ValueError(f"unknown fusion scale {scale!r}")


def _order(items: np.ndarray, cloud: np.ndarray, device: np.ndarray | None, alpha: float,
           scale: Scale) -> np.ndarray:
    """(M, C) items reordered by fused score (padding last)."""
    valid = items > 0
    fused = _normalise_rows(cloud, valid, scale)
    if device is not None and alpha < 1.0:
        fused = alpha * fused + (1 - alpha) * _normalise_rows(device, valid, scale)
    fused = np.where(valid, fused, -np.inf)
    return np.take_along_axis(items, np.argsort(-fused, axis=1, kind="stable"), axis=1)


def _rbo_rows(a: np.ndarray, b: np.ndarray, p: float = 0.9) -> np.ndarray:
    """1 - rank-biased overlap of the rows of ``a`` and ``b`` (M, D), as :func:`dcrec.shared.agreement.rank_biased_overlap`."""
    eq = (a[:, :, None] == b[:, None, :]) & (a[:, :, None] > 0)
    cum = eq.cumsum(axis=1).cumsum(axis=2)
    depth = a.shape[1]
    overlap = cum[:, np.arange(depth), np.arange(depth)]  # |a[:d+1] & b[:d+1]|
    w = p ** np.arange(depth)
    return 1.0 - (overlap / np.arange(1, depth + 1) * w).sum(axis=1) / w.sum()


def disagreements(items: np.ndarray, cloud: np.ndarray, device: np.ndarray,
                  measure: Measure = "rbo", top: int = 20) -> np.ndarray:
    """(M,) disagreement between the cloud's and the device's order of each list."""
    a = _order(items, cloud, None, 1.0, "rank")
    b = _order(items, device, None, 1.0, "rank")
    if measure == "rbo":
        n = int((items > 0).sum(axis=1).min()) if items.size else 0
        if n >= top:  # every list is deep enough: the vectorised form is exact
            return _rbo_rows(a[:, :top], b[:, :top])
    out = np.zeros(items.shape[0])
    for m in range(items.shape[0]):
        n = int((items[m] > 0).sum())
        if n >= 2:
            out[m] = disagreement(a[m, :n], b[m, :n], measure, top)
    return out


def budgeted_choice(scores: np.ndarray, ratio: float, prior: float, seed: int = 0,
                    capacity: float = 2.0) -> np.ndarray:
    """(M,) bool: which users request, deciding one by one in a random order.

    Online: each decision sees only the scores of users before it (the
    tracker's threshold) and the bucket's tokens; the bucket guarantees at most
    ``capacity + ratio * M`` requests.
    """
    rng = np.random.default_rng(seed)
    bucket = TokenBucket(ratio, capacity, initial=0.0)
    tracker = QuantileTracker(ratio, prior)
    chosen = np.zeros(scores.size, dtype=bool)
    for m in rng.permutation(scores.size):
        bucket.tick()
        over = tracker.update(float(scores[m]))
        if (over or bucket.full) and bucket.try_spend():
            chosen[m] = True
    return chosen


def evaluate(lists: OfflineLists, scorer: object | None, alpha: float = 0.5,
             ratios: tuple[float, ...] = (0.05, 0.2), scale: Scale = "rank",
             measure: Measure = "rbo", top: int = 20, prior: float = 0.9,
             seed: int = 0) -> dict[str, dict[str, float]]:
    """Metrics (HR/NDCG@5,10,20, MRR, request ratio) per variant.

    ``scorer`` has ``score_batch(histories (M, L), candidates (M, C)) -> (M, C)``
    (:class:`~dcrec.cloud.training.collab.TorchScorer` or the runtime's
    :class:`~dcrec.device.reranker.OnnxReranker`); ``None`` evaluates the cloud alone.
    """
    t = lists.targets
    out: dict[str, dict[str, float]] = {}

    def row(name: str, ranked: np.ndarray, ratio: float) -> None:
        out[name] = {**summarize(ranks_in_lists(ranked, t)), "request_ratio": ratio}

    row("cloud stale", _order(lists.stale, lists.stale_scores, None, 1.0, scale), 0.0)
    row("cloud fresh", _order(lists.fresh, lists.fresh_scores, None, 1.0, scale), 1.0)
    if scorer is None:
        return out
    ds = scorer.score_batch(lists.hist, np.where(lists.stale > 0, lists.stale, 1))  # type: ignore[attr-defined]
    df = scorer.score_batch(lists.hist, np.where(lists.fresh > 0, lists.fresh, 1))  # type: ignore[attr-defined]
    stale_rank = _order(lists.stale, lists.stale_scores, ds, alpha, scale)
    fresh_rank = _order(lists.fresh, lists.fresh_scores, df, alpha, scale)
    row("device rerank (stale list)", _order(lists.stale, ds, None, 1.0, scale), 0.0)
    row(f"fusion a={alpha}, no requests", stale_rank, 0.0)
    row(f"fusion a={alpha}, always fresh", fresh_rank, 1.0)
    score = disagreements(lists.stale, lists.stale_scores, ds, measure, top)
    rng = np.random.default_rng(seed)
    for r in ratios:
        pick = rng.random(t.size) < r
        row(f"random {r:.0%}", np.where(pick[:, None], fresh_rank, stale_rank), float(pick.mean()))
        pick = budgeted_choice(score, r, prior, seed)
        row(f"budgeted {r:.0%} ({measure})", np.where(pick[:, None], fresh_rank, stale_rank),
            float(pick.mean()))
    return out


def format_table(results: dict[str, dict[str, float]], k: int = 10) -> str:
    lines = [f"| variant | HR@{k} | NDCG@{k} | NDCG@20 | request ratio |", "|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m[f'HR@{k}']:.4f} | {m[f'NDCG@{k}']:.4f} | {m['NDCG@20']:.4f} | "
                     f"{m['request_ratio']:.3f} |")
    return "\n".join(lines)
