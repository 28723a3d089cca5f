"""The learned request policy in the quality harness.

For every validation and test user the harness replays the device's situation on the stale
list (a data set with fewer than 20,000 validation users replays up to 8 earlier prefixes of
each, :func:`prefixes_for`) (:func:`dcrec.shared.request_value.situation_features`, the runtime's own features), and
the gain a fresh list brings on the target: NDCG@10 of the fused fresh list minus that of the
fused stale one. The request-value model is fitted on the validation users, whose lists come
from the cloud that never saw their targets (out of fold), and spends each budget on test
through a threshold set on validation predictions and the runtime's token bucket, as the
``disagreement`` variant does. Never calibrated on test.

Rows: ``learned@r`` and ``oracle@r`` (the ``r`` share of users a fresh list helps most, known
from the test targets: the ceiling of any request policy). ``learned`` rows also carry the gain
over random requests at the same ratio with its 95 % paired bootstrap interval over users
(``vs_random``, ``vs_random_lo``, ``vs_random_hi``), the same against ``disagreement``, and
``oracle_share``, the share of the random-to-oracle gap it closes. The seed's info holds each
score's normalised Qini coefficient on test (``qini_learned``, ``qini_disagreement``): the
area between its uplift curve and random's, over the oracle's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dcrec.device.budget import TokenBucket
from dcrec.shared.metrics import ndcg_gains
from dcrec.shared.request_value import FEATURES, situation_features
from dcrec.shared.splits import EvalSet

#: The device distribution's temperature in the features: the runtime's default.
TEMPERATURE = 2.0


#: Replayed situations the request model should have at least: a data set with fewer
#: validation users replays that many more prefixes per user, up to MAX_PREFIXES.
MIN_ROWS = 20000
MAX_PREFIXES = 8


def prefixes_for(n_users: int) -> int:
    """Prefixes replayed per validation user: 1 when there are MIN_ROWS users or more."""
    return int(min(MAX_PREFIXES, max(1, -(-MIN_ROWS // max(n_users, 1)))))


def earlier(valid: EvalSet, p: int, lag: int) -> EvalSet:
    """The validation situations ``p`` events earlier: history and target shifted back by
    ``p``, the cloud's view ``lag`` events behind the history; users too short are left out."""
    users, hist, targets, cloud = [], [], [], []
    for u, h, t in zip(valid.users, valid.histories, valid.targets, strict=True):
        full = np.append(np.asarray(h, dtype=np.int64), t)
        end = full.size - 1 - p  # the target's position
        if end - lag < 1:
            continue
        users.append(u), hist.append(full[:end]), targets.append(int(full[end]))
        cloud.append(full[: end - lag])
    return EvalSet(np.asarray(users, dtype=np.int64), hist, np.asarray(targets, dtype=np.int64), cloud)


def replay_features(ev: EvalSet, stale_items: np.ndarray, stale_cloud: np.ndarray,
                    stale_srm: np.ndarray, sent: np.ndarray, shown: np.ndarray,
                    local: np.ndarray | None, open_scores: Any, show: int = 10,
                    top: int = 20) -> np.ndarray:
    """(M, F) features of each user's situation on the stale list.

    ``stale_*``: the cloud's own stale list (the device's drop applied) with both models'
    scores; ``sent``: that list as generated; ``shown`` (M, >=show) the fused stale order;
    ``local`` (M, L) the index's local lists or None; ``open_scores``: an iterator of
    ``(lo, hi, scores)`` over the device's catalogue scores with padding and seen at -inf.
    """
    x = np.zeros((len(ev), len(FEATURES)))
    for lo, hi, scores in open_scores:
        for j in range(lo, hi):
            live = stale_items[j] > 0
            h, c = ev.histories[j], ev.cloud_histories[j]
            x[j] = situation_features(
                scores[j - lo], shown[j][:show], stale_items[j][live], stale_cloud[j][live],
                stale_srm[j][live], sent[j][sent[j] > 0], h[len(c):], int(np.unique(h).size),
                None if local is None else local[j][local[j] > 0], TEMPERATURE, show, top)
    return x


def refresh_gain(stale_r: np.ndarray, fresh_r: np.ndarray) -> np.ndarray:
    """(M,) NDCG@10 a fresh list adds for each user (negative where it costs)."""
    return ndcg_gains(fresh_r, 10) - ndcg_gains(stale_r, 10)


def budget_requests(score: np.ndarray, threshold: float, ratio: float, seed: int,
                    capacity: float = 2.0) -> np.ndarray:
    """Users whose ``score`` exceeds ``threshold``, in a random order, under a token bucket
    refilled ``ratio`` per user (the runtime's :class:`~dcrec.device.budget.TokenBucket`)."""
    bucket = TokenBucket(ratio, capacity)
    out = np.zeros(score.size, dtype=bool)
    for j in np.random.default_rng([seed, 7]).permutation(score.size):
        bucket.tick()
        out[j] = bool(score[j] > threshold) and bucket.try_spend()
    return out


def qini(score: np.ndarray, gain: np.ndarray) -> float:
    """Normalised Qini coefficient: area between ``score``'s cumulative-gain curve and the
    random line, over the same area for the oracle order (1 = oracle, 0 = random)."""
    m = gain.size
    total = gain.sum()
    rand = total * (np.arange(1, m + 1) / m)
    model = np.cumsum(gain[np.argsort(-score, kind="stable")])
    best = np.cumsum(np.sort(gain)[::-1])
    denom = float((best - rand).sum())
    return float((model - rand).sum() / denom) if denom > 0 else 0.0


def paired_interval(diff: np.ndarray, seed: int, resamples: int = 1000,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-user differences ``diff`` with its percentile bootstrap interval over users."""
    rng = np.random.default_rng([seed, 99])
    means = np.empty(resamples)
    for lo in range(0, resamples, 100):
        hi = min(resamples, lo + 100)
        means[lo:hi] = diff[rng.integers(0, diff.size, (hi - lo, diff.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(diff.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def learned_rows(seed: int, ratios: tuple[float, ...], x_valid: np.ndarray, gain_valid: np.ndarray,
                 x_test: np.ndarray, stale_r: np.ndarray, fresh_r: np.ndarray,
                 stale_in: np.ndarray, fresh_in: np.ndarray, dis_asks: dict[float, np.ndarray],
                 test_dis: np.ndarray, metrics: Callable[..., dict[str, float]],
                 row: Callable[..., Any]) -> tuple[list[Any], dict[str, Any]]:
    """``learned`` and ``oracle`` rows at every ratio strictly between 0 and 1, and the info."""
    from dcrec.cloud.training.request_value import fit_request_model

    model = fit_request_model(x_valid, gain_valid, seed=seed, temperature=TEMPERATURE)
    v_pred, t_pred = model.predict(x_valid), model.predict(x_test)
    gain = refresh_gain(stale_r, fresh_r)
    info: dict[str, Any] = {"qini_learned": qini(t_pred, gain), "qini_disagreement": qini(test_dis, gain),
                            "request_model": model.to_dict()}
    rows = []
    for r in ratios:
        if not 0.0 < r < 1.0:
            continue
        k = int(round(r * gain.size))
        best = np.zeros(gain.size, dtype=bool)
        best[np.argsort(-gain, kind="stable")[:k]] = True
        m = metrics(np.where(best, fresh_r, stale_r), np.where(best, fresh_in, stale_in))
        m["measured_ratio"] = k / gain.size
        rows.append(row("oracle", r, seed, m))
        oracle_gain = float((best * gain).mean() - r * gain.mean())
        threshold = float(np.quantile(v_pred, 1.0 - r))
        ask = budget_requests(t_pred, threshold, r, seed)
        m = metrics(np.where(ask, fresh_r, stale_r), np.where(ask, fresh_in, stale_in))
        m["measured_ratio"] = float(ask.mean())
        m["threshold"] = threshold
        # Random at this ratio is stale + r * gain in expectation, user by user.
        m["vs_random"], m["vs_random_lo"], m["vs_random_hi"] = paired_interval((ask - r) * gain, seed)
        if r in dis_asks:
            d = (ask.astype(float) - dis_asks[r]) * gain
            m["vs_disagreement"], m["vs_disagreement_lo"], m["vs_disagreement_hi"] = paired_interval(d, seed)
        m["oracle_share"] = m["vs_random"] / oracle_gain if oracle_gain > 0 else 0.0
        rows.append(row("learned", r, seed, m))
    return rows, info
