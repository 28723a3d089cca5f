"""The offline quality harness: every variant of the stale-cloud protocol in one table.

Protocol (LSC4Rec's split; docs/BENCHMARKS.md): the cloud last saw ``i1..i(n-3)``, the
device sees ``i1..i(n-1)``, the target is ``in``; metrics over the full
catalogue, an item missing from a list is a miss. Variants:

* ``cloud-stale``      the cloud's list from its stale view, in the cloud's order;
* ``cloud-fresh``      the cloud's list from the device's history (no rerank);
* ``device-only``      the device model over the whole catalogue, fresh history;
* ``fusion``           the device reranks the stale list (no requests);
* ``always-fresh``     the device reranks a fresh list for every user (the upper bound);
* ``neighbour-index``  with ``neighbours`` > 0: the local list the device builds from the
                       cloud's neighbour index (:mod:`dcrec.shared.neighbours`) and its fresh
                       history, alone; ``fusion`` and the stale side of every request
                       variant then rank the stale list blended with it, as the runtime does;
* ``random@r``         fresh lists for a random share r of users, stale for the rest;
* ``disagreement@r``   fresh lists for users whose device/cloud disagreement on
                       the stale list crosses a threshold, decided by the runtime's
                       own :class:`~dcrec.device.policy.DisagreementPolicy`, with the
                       threshold calibrated on the validation step (never on test).

The fusion weight is chosen on the validation step too (one weight for stale
lists, one for fresh lists: the device knows which it holds).
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.models import backends
from dcrec.device.budget import TokenBucket
from dcrec.device.fusion import blend_lists, fuse
from dcrec.device.policy import DisagreementPolicy, PolicyInput
from dcrec.shared.agreement import Measure, disagreement, expected_regret, softmax, uncovered_mass
from dcrec.shared.data import Dataset, load_dataset
from dcrec.shared.metrics import ranks_from_scores, ranks_in_lists, summarize
from dcrec.shared.splits import EvalSet, leave_one_out, stale_cloud_split
from dcrec.shared.system import SYSTEM, System
from dcrec.simulator.bench.scoring import (
    cloud_lists,
    seen_mask,
    srm_candidate_scores,
    srm_full_scores,
    trained_backend,
)

log = logging.getLogger(__name__)

RATIOS = (0.0, 0.05, 0.10, 0.20, 0.30, 0.50, 1.0)
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))


@dataclass
class QualityConfig:
    dataset: str = "ml-100k"
    seeds: int = 1
    lag: int = 2  # how many items the cloud's view trails the device's
    candidates: int = SYSTEM.device.candidates  # length of the cloud's list
    ratios: tuple[float, ...] = RATIOS
    cloud_backend: str = SYSTEM.cloud.backend
    cloud_options: dict[str, Any] = field(default_factory=dict)
    device_epochs: int = 200
    device_time_budget_s: float = 1200.0
    device_model: dict[str, Any] = field(default_factory=dict)  # SASRec overrides
    device_batch_size: int = 256
    device_patience: int = 3
    # How the device model is trained: ``full`` (SASRec, cross-entropy over the catalogue), or
    # that model trained again on lists (docs/DEVICE.md, collaborative training): ``collab`` on the cloud's own candidate
    # lists (out-of-fold, ``device_folds``), ``random`` on random negatives, same budget.
    device_objective: str = "full"
    device_folds: int = 3
    device_full_weight: float = 1.0  # collab: weight of the full-catalogue term beside the lists
    device_missing_target: str = "ignore"  # collab: lists without the target train the full term only
    # Distillation while training on lists: weight of the soft-label term towards the cloud's
    # distribution over its fresh list for each training prefix (out of fold), and the
    # temperature of those labels (0: the cloud's scores normalised).
    device_distill_weight: float = 0.0
    device_distill_temperature: float = 0.0
    # Out-of-fold clouds fitted without the validation targets (RerankTrainConfig.folds_hold_out_valid).
    device_folds_hold_out_valid: bool = False
    reuse: bool = False  # reuse models already trained in workdir with the same settings
    # Softmax temperatures the regret signal may use; the validation step picks one.
    regret_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0)
    random_draws: int = 20  # random-request variant: metrics averaged over this many draws
    measure: Measure = SYSTEM.device.measure
    measure_top: int = SYSTEM.device.measure_top
    # The device's own top-k unseen items (whole catalogue) added to every cloud list before
    # fusion, as the runtime's ``RuntimeConfig.device_candidates`` does; 0: the cloud's list only.
    device_candidates: int = SYSTEM.device.device_candidates
    # Width of the cloud's neighbour index (shared.neighbours; 0: none). With it, a stale list
    # is blended with the device's local list (``candidates`` long) before fusion, the local
    # list's share of the cloud-side score chosen on the validation step among these weights.
    neighbours: int = SYSTEM.cloud.neighbours if SYSTEM.device.neighbours else 0
    neighbour_weights: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    baselines: tuple[str, ...] = ("most-popular", "sasrec", "gru4rec", "cloud")
    baseline_seeds: int | None = None  # seeds the baselines are trained for (None: every seed)
    max_users: int | None = None  # evaluate a sample of users (tests, quick looks)
    # The learned request policy (simulator.bench.request_value): a request-value model fitted
    # on the validation users' replayed situations, with the oracle's rows beside it.
    learned: bool = True
    workdir: Path = Path("runs/bench")
    jobs: int = 1  # worker processes: seeds and baselines train side by side
    threads: int | None = None  # torch threads per worker (None: the cores shared among jobs)

    # The system measured (dcrec.shared.system): its name labels the report; its policy's
    # target ratio is the row the headline quotes.
    system: str = SYSTEM.name
    system_ratio: float = SYSTEM.policy.target_ratio

    @classmethod
    def of_system(cls, system: System, **given: Any) -> QualityConfig:
        """The harness settings that measure ``system``; ``given`` (explicit flags) win."""
        d = system.device
        values: dict[str, Any] = {
            "cloud_backend": system.cloud.backend, "candidates": d.candidates, "measure": d.measure,
            "measure_top": d.measure_top, "device_candidates": d.device_candidates,
            "neighbours": system.cloud.neighbours if d.neighbours else 0,
            "learned": system.cloud.request_model, "system": system.name,
            "system_ratio": system.policy.target_ratio}
        return cls(**{**values, **given})

    def torch_threads(self) -> int:
        if self.threads is not None:
            return max(1, self.threads)
        return max(1, (os.cpu_count() or 1) // max(1, self.jobs))

    def device_train_config(self, seed: int) -> Any:
        from dcrec.cloud.training.train import TrainConfig

        return TrainConfig(epochs=self.device_epochs, time_budget_s=self.device_time_budget_s,
                           seed=seed, batch_size=self.device_batch_size,
                           patience=self.device_patience, threads=self.torch_threads(),
                           model=self.device_model)


@dataclass
class Row:
    """One table row: a variant at a request ratio, metrics for one seed."""

    variant: str
    ratio: float | None
    seed: int
    metrics: dict[str, float]


def _fused_ranks(items: np.ndarray, cloud: np.ndarray, srm: np.ndarray, alpha: float,
                 targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each target in the fused order; also the fused orders (M, C)."""
    orders = np.empty_like(items)
    for j in range(items.shape[0]):
        f = fuse(cloud[j], srm[j], alpha)
        orders[j] = items[j][np.argsort(-f, kind="stable")]
    return ranks_in_lists(orders, targets), orders


def _disagreements(items: np.ndarray, cloud: np.ndarray, srm: np.ndarray, measure: Measure,
                   top: int) -> np.ndarray:
    out = np.empty(items.shape[0])
    for j in range(items.shape[0]):
        live = items[j] > 0
        it = items[j][live]
        c_order = it[np.argsort(-cloud[j][live], kind="stable")]
        d_order = it[np.argsort(-srm[j][live], kind="stable")]
        out[j] = disagreement(c_order, d_order, measure, top) if it.size > 1 else 0.0
    return out


def _open_full_scores(srm: Any, histories: list[np.ndarray], n_items: int) -> Iterator[
        tuple[int, int, np.ndarray]]:
    """:func:`srm_full_scores` with padding and each user's seen items at ``-inf``."""
    for lo, hi, scores in srm_full_scores(srm, histories):
        scores[:, 0] = -np.inf
        scores[seen_mask(histories[lo:hi], n_items)] = -np.inf
        yield lo, hi, scores


def _coverage(histories: list[np.ndarray], items: np.ndarray, srm: Any, top: int,
              n_items: int) -> np.ndarray:
    """Per user: share of the device model's top-``top`` items (whole catalogue) absent from the list."""
    out = np.empty(items.shape[0])
    for lo, hi, scores in _open_full_scores(srm, histories, n_items):
        tops = np.argpartition(-scores, top, axis=1)[:, :top]
        for j in range(lo, hi):
            out[j] = disagreement(items[j], tops[j - lo], "coverage")
    return out


def _catalogue_signal(histories: list[np.ndarray], lists: np.ndarray, srm: Any, k: int,
                      n_items: int, temperatures: tuple[float, ...], measure: str = "regret"
                      ) -> dict[float, np.ndarray]:
    """Per temperature, per user, from the device's softmax over the catalogue: ``regret``,
    the expected DCG@k the shown (fused) list ``lists`` loses against the device's own best
    list, or ``uncovered``, the probability mass outside the cloud's list ``lists``."""
    out = {t: np.empty(lists.shape[0]) for t in temperatures}
    for lo, hi, scores in _open_full_scores(srm, histories, n_items):
        for t in temperatures:
            probs = softmax(scores, t)
            for j in range(lo, hi):
                out[t][j] = (expected_regret(probs[j - lo], lists[j], k) if measure == "regret"
                             else uncovered_mass(probs[j - lo], lists[j]))
    return out


def _select_share(signal: np.ndarray, stale_r: np.ndarray, fresh_r: np.ndarray,
                  ratios: tuple[float, ...]) -> float:
    """Mean NDCG@10 when the top ``r`` share of users by ``signal`` gets a fresh list."""
    from dcrec.shared.metrics import ndcg

    order = np.argsort(-signal, kind="stable")
    vals = []
    for r in ratios:
        pick = np.zeros(signal.size, dtype=bool)
        pick[order[: int(round(r * signal.size))]] = True
        vals.append(ndcg(np.where(pick, fresh_r, stale_r), 10))
    return float(np.mean(vals))


def _policy_requests(dis: np.ndarray, threshold: float, ratio: float, seed: int,
                     capacity: float = 2.0) -> np.ndarray:
    """Ask the runtime's policy, user by user, whether this disagreement triggers a request.

    Users decide one after another in a random order, under a token bucket
    refilled ``ratio`` tokens per user (the runtime's :class:`~dcrec.device.budget.TokenBucket`):
    a threshold calibrated on other users may fire more often than the budget
    allows, and the bucket then refuses, as on a device, so the requests never
    exceed ``ratio`` of the users (plus the bucket's capacity).
    """
    policy = DisagreementPolicy(threshold=float(np.clip(threshold, 0.0, 1.0)))
    bucket = TokenBucket(ratio, capacity)
    out = np.zeros(dis.size, dtype=bool)
    for j in np.random.default_rng([seed, 7]).permutation(dis.size):
        bucket.tick()
        state = PolicyInput(now=0.0, has_list=True, list_age_s=0.0, ttl_s=float("inf"),
                            remaining=1, total=1, disagreement=float(dis[j]), events_since_request=1)
        out[j] = policy.decide(state) is not None and bucket.try_spend()
    return out


def calibrate_threshold(valid_dis: np.ndarray, ratio: float) -> float:
    """The disagreement above which a share ``ratio`` of validation users lies."""
    if ratio <= 0.0:
        return 1.0
    if ratio >= 1.0:
        return -1.0  # below every score: everyone requests
    return float(np.quantile(valid_dis, 1.0 - ratio))


@dataclass
class _Lists:
    """Stale and fresh candidate lists of one evaluation set, with both models' scores."""

    targets: np.ndarray
    stale_items: np.ndarray
    stale_cloud: np.ndarray
    stale_srm: np.ndarray
    fresh_items: np.ndarray
    fresh_cloud: np.ndarray
    fresh_srm: np.ndarray
    sent: np.ndarray | None = None  # the stale lists as the cloud sent them (before the device's drop)


def _lists(ev: EvalSet, gen: backends.CandidateGenerator, srm: Any, count: int) -> _Lists:
    # The device drops what the user consumed since the cloud's view.
    since = [h[len(c):] for h, c in zip(ev.histories, ev.cloud_histories, strict=True)]
    sent = np.zeros((len(ev), count), dtype=np.int64)
    si, sc = cloud_lists(gen, ev.cloud_histories, count, exclude=since, sent=sent)
    fi, fc = cloud_lists(gen, ev.histories, count)
    return _Lists(ev.targets, si, sc, srm_candidate_scores(srm, ev.histories, si),
                  fi, fc, srm_candidate_scores(srm, ev.histories, fi), sent)


def _device_top(histories: list[np.ndarray], srm: Any, k: int, n_items: int) -> np.ndarray:
    """(M, k) the device model's k best unseen items per user over the whole catalogue, best first."""
    out = np.zeros((len(histories), k), dtype=np.int64)
    for lo, hi, scores in _open_full_scores(srm, histories, n_items):
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        out[lo:hi] = np.take_along_axis(top, order, 1)
    return out


def add_device_candidates(items: np.ndarray, cloud: np.ndarray, srm_scores: np.ndarray,
                          extra: np.ndarray, extra_srm: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists (M, C) widened to (M, C + k) with the device's picks ``extra`` (M, k) not already in them.

    A pick the cloud did not list gets a cloud score just below the list's worst
    (so on the rank scale it ties with nothing the cloud ranked), and its device
    score ``extra_srm``; a pick already listed becomes padding (0, -inf, -inf).
    """
    m, k = extra.shape
    dup = (extra[:, :, None] == items[:, None, :]).any(axis=2)
    finite = np.where(np.isfinite(cloud), cloud, np.inf).min(axis=1)
    floor = np.where(np.isfinite(finite), finite - 1.0, 0.0).astype(cloud.dtype)
    new_items = np.where(dup, 0, extra)
    new_cloud = np.where(dup, -np.inf, np.repeat(floor[:, None], k, axis=1)).astype(cloud.dtype)
    new_srm = np.where(dup, -np.inf, extra_srm).astype(srm_scores.dtype)
    return (np.concatenate([items, new_items], 1), np.concatenate([cloud, new_cloud], 1),
            np.concatenate([srm_scores, new_srm], 1))


def _device_extra(histories: list[np.ndarray], srm: Any, k: int, n_items: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The device's top ``k`` per user (M, k) and their device scores (M, k)."""
    extra = _device_top(histories, srm, k, n_items)
    return extra, srm_candidate_scores(srm, histories, extra)


def _with_device_candidates(ls: _Lists, histories: list[np.ndarray], srm: Any, k: int,
                            n_items: int, picks: tuple[np.ndarray, np.ndarray] | None = None) -> _Lists:
    extra, extra_srm = picks if picks is not None else _device_extra(histories, srm, k, n_items)
    si, sc, ss = add_device_candidates(ls.stale_items, ls.stale_cloud, ls.stale_srm, extra, extra_srm)
    fi, fc, fs = add_device_candidates(ls.fresh_items, ls.fresh_cloud, ls.fresh_srm, extra, extra_srm)
    return _Lists(ls.targets, si, sc, ss, fi, fc, fs)


def local_lists(index: Any, histories: list[np.ndarray], count: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(M, count) items and scores of the index's local lists (seen items excluded), padded 0 / -inf."""
    items = np.zeros((len(histories), count), dtype=np.int64)
    scores = np.full((len(histories), count), -np.inf, dtype=np.float32)
    for j, h in enumerate(histories):
        it, sc = index.local_list(h, count, exclude=set(np.asarray(h).tolist()))
        items[j, : it.size], scores[j, : sc.size] = it, sc
    return items, scores


def blend_with_local(items: np.ndarray, cloud: np.ndarray, li: np.ndarray, lsc: np.ndarray,
                     weights: tuple[float, ...]) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Each row's stale list united with its local list (:func:`dcrec.device.fusion.blend_lists`):
    (M, C + L) items, the same for every weight, and per weight the (M, C + L) cloud-side scores."""
    m, width = items.shape[0], items.shape[1] + li.shape[1]
    out_items = np.zeros((m, width), dtype=np.int64)
    out = {w: np.full((m, width), -np.inf, dtype=np.float32) for w in weights}
    for j in range(m):
        a, b = items[j] > 0, li[j] > 0
        for w in weights:
            it, sc = blend_lists(items[j][a], cloud[j][a], li[j][b], lsc[j][b], w)
            out[w][j, : sc.size] = sc
        out_items[j, : it.size] = it
    return out_items, out


def _with_neighbours(ls: _Lists, histories: list[np.ndarray], index: Any, srm: Any, count: int,
                     weights: tuple[float, ...]) -> tuple[np.ndarray, dict[float, _Lists]]:
    """The local lists (M, count), and per weight ``ls`` with its stale side blended with them."""
    li, lsc = local_lists(index, histories, count)
    items, by_w = blend_with_local(ls.stale_items, ls.stale_cloud, li, lsc, weights)
    srm_scores = srm_candidate_scores(srm, histories, items)
    return li, {w: _Lists(ls.targets, items, c, srm_scores, ls.fresh_items, ls.fresh_cloud, ls.fresh_srm)
                for w, c in by_w.items()}


def _best_alpha(items: np.ndarray, cloud: np.ndarray, srm: np.ndarray, targets: np.ndarray) -> float:
    return _best_alpha_ndcg(items, cloud, srm, targets)[0]


def _best_alpha_ndcg(items: np.ndarray, cloud: np.ndarray, srm: np.ndarray, targets: np.ndarray
                     ) -> tuple[float, float]:
    """The fusion weight with the best NDCG@10 on these lists (ties: nearest 0.5), and that NDCG@10."""
    from dcrec.shared.metrics import ndcg

    scores = {a: ndcg(_fused_ranks(items, cloud, srm, a, targets)[0], 10) for a in ALPHAS}
    best = max(scores, key=lambda a: (scores[a], -abs(a - 0.5)))
    return best, scores[best]


def _metrics(ranks: np.ndarray, in_list: np.ndarray | None = None) -> dict[str, float]:
    m = summarize(ranks)
    m["recall@list"] = float(np.mean(in_list if in_list is not None else ranks >= 0))
    return m


def run_seed(ds: Dataset, cfg: QualityConfig, seed: int,
             say: Callable[[str], None] = lambda s: None) -> tuple[list[Row], dict[str, Any]]:
    from dcrec.cloud.training.train import load_sasrec, train_sasrec, trained_with

    rows: list[Row] = []
    info: dict[str, Any] = {}
    split = stale_cloud_split(ds, lag=cfg.lag)
    test, valid = split.test, split.valid
    if cfg.max_users is not None:
        rng = np.random.default_rng(1234)
        test = test.take(np.sort(rng.choice(len(test), min(cfg.max_users, len(test)), replace=False)))
        valid = valid.take(np.sort(rng.choice(len(valid), min(cfg.max_users, len(valid)), replace=False)))
    work = Path(cfg.workdir) / ds.name / f"seed{seed}"

    t = time.perf_counter()
    gen = _cloud(ds, cfg, split.train, work / "cloud", lambda m: say(f"seed {seed}: {m}"))
    # Validation needs a cloud that never saw the validation targets.
    gen_val = _cloud(ds, cfg, [s[:-1] for s in split.train if len(s) > 2], work / "cloud-valid",
                     lambda m: say(f"seed {seed}: {m} (validation)"))
    info["cloud_train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tc = cfg.device_train_config(seed)
    if cfg.reuse and trained_with(work / "device" / "sasrec.json", tc):
        say(f"seed {seed}: reusing the device model (SASRec) in {work / 'device'}")
        info["device_best_epoch"] = json.loads((work / "device" / "sasrec.json").read_text())["best_epoch"]
    else:
        say(f"seed {seed}: training the device model (SASRec)")
        res = train_sasrec(split.train, ds.n_items, tc, work / "device",
                           progress=lambda e, loss, m: say(
                               f"seed {seed}: device epoch {e} loss {loss:.3f} "
                               f"valid NDCG@10 {m.get('NDCG@10', 0.0):.4f}"))
        info["device_best_epoch"] = res.best_epoch
    srm = load_sasrec(work / "device")
    info["device_train_s"] = time.perf_counter() - t
    if cfg.device_objective != "full":
        t = time.perf_counter()
        srm = _train_on_lists(ds, cfg, seed, split.train, gen, srm, work, say)
        info["device_list_train_s"] = time.perf_counter() - t
    info["device_objective"] = cfg.device_objective

    say(f"seed {seed}: candidate lists and scores for {len(valid)} validation and {len(test)} test users")
    v = _lists(valid, gen_val, srm, cfg.candidates)
    te = _lists(test, gen, srm, cfg.candidates)
    te_base = te  # the cloud's own lists: what the request model's features see
    cloud_stale_items, cloud_fresh_items = te.stale_items, te.fresh_items
    v_cloud_stale = v.stale_items
    local_items = None
    alpha_stale: float | None = None  # chosen with the local list's weight when there is one
    if cfg.neighbours > 0:
        from dcrec.cloud.models.neighbours import build

        say(f"seed {seed}: neighbour indexes ({cfg.neighbours} per item) and local lists")
        # Validation's index comes from the cloud that never saw the validation targets.
        _, v_by_w = _with_neighbours(v, valid.histories, build(gen_val, cfg.neighbours), srm,
                                           cfg.candidates, cfg.neighbour_weights)
        local_items, t_by_w = _with_neighbours(te, test.histories, build(gen, cfg.neighbours), srm,
                                               cfg.candidates, cfg.neighbour_weights)
        own = {"valid": v, "test": te}  # the cloud's own lists: what the order measures compare
        if cfg.device_candidates > 0:
            say(f"seed {seed}: adding the device's top {cfg.device_candidates} to every list")
            for name, ev, by_w in (("valid", valid, v_by_w), ("test", test, t_by_w)):
                picks = _device_extra(ev.histories, srm, cfg.device_candidates, ds.n_items)
                own[name] = _with_device_candidates(own[name], ev.histories, srm, cfg.device_candidates,
                                                    ds.n_items, picks)
                for w, x in by_w.items():
                    by_w[w] = _with_device_candidates(x, ev.histories, srm, cfg.device_candidates,
                                                      ds.n_items, picks)
        # The local list's weight and the stale fusion weight, chosen together on validation.
        fits = {w: _best_alpha_ndcg(x.stale_items, x.stale_cloud, x.stale_srm, x.targets)
                for w, x in v_by_w.items()}
        weight = max(cfg.neighbour_weights, key=lambda w: fits[w][1])
        info["neighbour_weight"] = weight
        v, te = v_by_w[weight], t_by_w[weight]
        alpha_stale = fits[weight][0]
    elif cfg.device_candidates > 0:
        say(f"seed {seed}: adding the device's top {cfg.device_candidates} to every list")
        v = _with_device_candidates(v, valid.histories, srm, cfg.device_candidates, ds.n_items)
        te = _with_device_candidates(te, test.histories, srm, cfg.device_candidates, ds.n_items)
    if alpha_stale is None:
        alpha_stale = _best_alpha(v.stale_items, v.stale_cloud, v.stale_srm, v.targets)
    alpha_fresh = _best_alpha(v.fresh_items, v.fresh_cloud, v.fresh_srm, v.targets)
    info.update(alpha_stale=alpha_stale, alpha_fresh=alpha_fresh)
    y = te.targets
    stale_r, stale_orders = _fused_ranks(te.stale_items, te.stale_cloud, te.stale_srm, alpha_stale, y)
    fresh_r, _ = _fused_ranks(te.fresh_items, te.fresh_cloud, te.fresh_srm, alpha_fresh, y)
    v_stale_r, v_orders = _fused_ranks(v.stale_items, v.stale_cloud, v.stale_srm, alpha_stale,
                                       v.targets)
    v_fresh_r, _ = _fused_ranks(v.fresh_items, v.fresh_cloud, v.fresh_srm, alpha_fresh, v.targets)
    if cfg.measure in ("regret", "uncovered"):
        # regret compares what the user is shown (the fused stale list's top 10);
        # uncovered, the cloud's own stale list.
        v_lists, t_lists = ((v_orders, stale_orders) if cfg.measure == "regret"
                            else (v_cloud_stale, cloud_stale_items))
        by_t = _catalogue_signal(valid.histories, v_lists, srm, 10, ds.n_items, cfg.regret_temperatures,
                                 cfg.measure)
        # The temperature whose signal picks the users a refresh helps most, on validation.
        temp = max(cfg.regret_temperatures,
                   key=lambda t: _select_share(by_t[t], v_stale_r, v_fresh_r, (0.05, 0.2)))
        info["regret_temperature"] = temp
        valid_dis = by_t[temp]
        test_dis = _catalogue_signal(test.histories, t_lists, srm, 10, ds.n_items, (temp,), cfg.measure)[temp]
    elif cfg.measure == "coverage":
        valid_dis = _coverage(valid.histories, v.stale_items, srm, cfg.measure_top, ds.n_items)
        test_dis = _coverage(test.histories, te.stale_items, srm, cfg.measure_top, ds.n_items)
    else:
        # With the index the order measures still compare the device with the cloud's own
        # stale list, as the runtime does (the local list changes what is shown only).
        vo, to = (own["valid"], own["test"]) if cfg.neighbours > 0 else (v, te)
        valid_dis = _disagreements(vo.stale_items, vo.stale_cloud, vo.stale_srm, cfg.measure,
                                   cfg.measure_top)
        test_dis = _disagreements(to.stale_items, to.stale_cloud, to.stale_srm, cfg.measure,
                                  cfg.measure_top)

    stale_in = (te.stale_items == y[:, None]).any(1)
    fresh_in = (te.fresh_items == y[:, None]).any(1)
    rows.append(Row("cloud-stale", None, seed, _metrics(ranks_in_lists(cloud_stale_items, y))))
    rows.append(Row("cloud-fresh", None, seed, _metrics(ranks_in_lists(cloud_fresh_items, y))))
    dev_ranks = np.empty(len(y), dtype=np.int64)
    for lo, hi, scores in srm_full_scores(srm, test.histories):
        dev_ranks[lo:hi] = ranks_from_scores(scores, y[lo:hi],
                                             exclude=seen_mask(test.histories[lo:hi], ds.n_items))
    rows.append(Row("device-only", None, seed, _metrics(dev_ranks, np.ones(len(y), bool))))
    if local_items is not None:
        rows.append(Row("neighbour-index", None, seed, _metrics(ranks_in_lists(local_items, y))))
    rows.append(Row("fusion", None, seed, _metrics(stale_r, stale_in)))
    rows.append(Row("always-fresh", None, seed, _metrics(fresh_r, fresh_in)))

    rng = np.random.default_rng(seed)
    dis_asks: dict[float, np.ndarray] = {}
    for r in cfg.ratios:
        # Random requests: the mean over draws, so the baseline is not one lucky or unlucky draw.
        k = int(round(r * len(y)))
        draws = []
        for _ in range(cfg.random_draws):
            pick = np.zeros(len(y), dtype=bool)
            pick[rng.choice(len(y), k, replace=False)] = True
            draws.append(_metrics(np.where(pick, fresh_r, stale_r), np.where(pick, fresh_in, stale_in)))
        m = {name: float(np.mean([d[name] for d in draws])) for name in draws[0]}
        m["measured_ratio"] = k / len(y)
        rows.append(Row("random", r, seed, m))
        threshold = calibrate_threshold(valid_dis, r)
        ask = (_policy_requests(test_dis, threshold, r, seed) if 0.0 < r < 1.0
               else np.full(len(y), r >= 1.0))
        m = _metrics(np.where(ask, fresh_r, stale_r), np.where(ask, fresh_in, stale_in))
        m["measured_ratio"] = float(ask.mean())
        m["threshold"] = threshold
        rows.append(Row("disagreement", r, seed, m))
        dis_asks[r] = ask
    if cfg.learned and any(0.0 < r < 1.0 for r in cfg.ratios):
        from dcrec.simulator.bench import request_value as rv

        # The request model's rows: the validation users' situations from a cloud that, as on
        # test, never saw the events since its view nor the target (it trains on each training
        # sequence less its last lag + 1 items; the validation cloud saw the events since).
        # A few validation users (a small data set) replay several prefixes each, the cloud
        # then trained without every replayed prefix's events since and target.
        prefixes = rv.prefixes_for(len(valid))
        t = time.perf_counter()
        cut = cfg.lag + prefixes
        gen_req = _cloud(ds, cfg, [q[: len(q) - cut] for q in split.train if len(q) - cut >= 2],
                         work / "cloud-request", lambda m: say(f"seed {seed}: {m} (request model)"))
        info["cloud_request_train_s"] = time.perf_counter() - t
        xs, gains = [], []
        for p in range(prefixes):
            ev = valid if p == 0 else rv.earlier(valid, p, cfg.lag)
            say(f"seed {seed}: the request-value model (situations of {len(ev)} validation users, "
                f"prefix {p + 1} of {prefixes})")
            r_base, r_orders, r_local, r_stale, r_fresh = _request_situations(
                ds, cfg, ev, gen_req, srm, info.get("neighbour_weight", 1.0), alpha_stale, alpha_fresh)
            xs.append(rv.replay_features(ev, r_base.stale_items, r_base.stale_cloud, r_base.stale_srm,
                                         r_base.sent, r_orders, r_local,
                                         _open_full_scores(srm, ev.histories, ds.n_items)))
            gains.append(rv.refresh_gain(r_stale, r_fresh))
        x = {"valid": np.concatenate(xs),
             "test": rv.replay_features(test, te_base.stale_items, te_base.stale_cloud, te_base.stale_srm,
                                        te_base.sent, stale_orders, local_items,
                                        _open_full_scores(srm, test.histories, ds.n_items))}
        gain_valid = np.concatenate(gains)
        info["request_rows"] = int(gain_valid.size)
        np.savez_compressed(work / "request-value.npz", x_valid=x["valid"], x_test=x["test"],
                            gain_valid=gain_valid, gain_test=rv.refresh_gain(stale_r, fresh_r),
                            dis_valid=valid_dis, dis_test=test_dis)  # for analysis
        learned, learned_info = rv.learned_rows(
            seed, cfg.ratios, x["valid"], gain_valid, x["test"], stale_r,
            fresh_r, stale_in, fresh_in, dis_asks, test_dis, _metrics, Row)
        rows += learned
        info.update(learned_info)
    return rows, info


def _request_situations(ds: Dataset, cfg: QualityConfig, ev: EvalSet, gen: backends.CandidateGenerator,
                        srm: Any, weight: float, alpha_stale: float, alpha_fresh: float
                        ) -> tuple[_Lists, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """``ev``'s lists from ``gen``, prepared as the stale-side variants' are (the local list
    blended at ``weight``, the device's candidates) and fused: the cloud's own lists, the
    fused stale orders, the local lists (None without an index), stale and fresh ranks."""
    base = _lists(ev, gen, srm, cfg.candidates)
    ls, local = base, None
    if cfg.neighbours > 0:
        from dcrec.cloud.models.neighbours import build

        local, by_w = _with_neighbours(base, ev.histories, build(gen, cfg.neighbours), srm,
                                       cfg.candidates, (weight,))
        ls = by_w[weight]
    if cfg.device_candidates > 0:
        ls = _with_device_candidates(ls, ev.histories, srm, cfg.device_candidates, ds.n_items)
    stale_r, orders = _fused_ranks(ls.stale_items, ls.stale_cloud, ls.stale_srm, alpha_stale, ls.targets)
    fresh_r, _ = _fused_ranks(ls.fresh_items, ls.fresh_cloud, ls.fresh_srm, alpha_fresh, ls.targets)
    return base, orders, local, stale_r, fresh_r


def _cloud(ds: Dataset, cfg: QualityConfig, sequences: list[np.ndarray], out: Path,
           say: Callable[[str], None]) -> backends.CandidateGenerator:
    """The harness's cloud model (``cfg.cloud_backend``) trained on ``sequences`` in ``out``."""
    return trained_backend(ds, cfg.cloud_backend, cfg.cloud_options, sequences, out, cfg.reuse, say)


def _train_on_lists(ds: Dataset, cfg: QualityConfig, seed: int, train: list[np.ndarray],
                    gen: backends.CandidateGenerator, srm: Any, work: Path,
                    say: Callable[[str], None]) -> Any:
    """Train the full-catalogue SASRec again on lists: the cloud's (collab) or random ones."""
    from dcrec.cloud.training import archs
    from dcrec.cloud.training.collab import RerankTrainConfig, backend_fitter, train_reranker
    from dcrec.cloud.training.train import trained_with

    if cfg.device_objective not in ("collab", "random"):
        raise ValueError(f"device_objective must be full, collab or random, got {cfg.device_objective!r}")
    init = archs.save(srm, work / "device-init")
    out = work / (f"device-{cfg.device_objective}" if cfg.device_distill_weight <= 0 else
                  f"device-{cfg.device_objective}-distill{cfg.device_distill_weight:g}"
                  f"-t{cfg.device_distill_temperature:g}")
    if cfg.device_folds_hold_out_valid:
        out = out.with_name(out.name + "-holdout")
    rc = RerankTrainConfig(objective=cfg.device_objective, candidates=cfg.candidates,  # type: ignore[arg-type]
                           valid_lag=cfg.lag, epochs=cfg.device_epochs,
                           batch_size=cfg.device_batch_size, patience=cfg.device_patience,
                           time_budget_s=cfg.device_time_budget_s, seed=seed,
                           threads=cfg.torch_threads(), init_from=str(init),
                           folds=(cfg.device_folds if cfg.device_objective == "collab"
                                  or cfg.device_distill_weight > 0 else 1),
                           full_weight=cfg.device_full_weight if cfg.device_objective == "collab" else 0.0,
                           missing_target=cfg.device_missing_target,
                           distill_weight=cfg.device_distill_weight,
                           distill_temperature=cfg.device_distill_temperature,
                           folds_hold_out_valid=cfg.device_folds_hold_out_valid,
                           max_examples=None if cfg.max_users is None else 50 * cfg.max_users)
    if cfg.reuse and trained_with(out / "reranker.json", rc):
        say(f"seed {seed}: reusing the {cfg.device_objective}-trained device model in {out}")
        return archs.load(out)[0]
    fit = (backend_fitter(cfg.cloud_backend, ds, work / "device-folds", cfg.cloud_options)
           if rc.folds > 1 else None)
    say(f"seed {seed}: training the device model again on {cfg.device_objective} lists")
    res = train_reranker("sasrec", train, gen, ds.n_items, rc, out, fit_generator=fit,
                         progress=lambda e, loss, m: say(
                             f"seed {seed}: {cfg.device_objective} epoch {e} loss {loss:.3f} "
                             f"valid rerank NDCG@10 {m.get('NDCG@10', 0.0):.4f}"))
    say(f"seed {seed}: {cfg.device_objective} training kept epoch {res.best_epoch}")
    model, _ = archs.load(out)
    return model


def run_baseline(ds: Dataset, cfg: QualityConfig, seed: int, name: str,
                 say: Callable[[str], None] = lambda s: None) -> Row:
    """One leave-one-out baseline (fresh history, full catalogue): most-popular, SASRec, GRU4Rec."""
    from dcrec.simulator.bench.baselines import BASELINES

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    split = leave_one_out(ds)
    test = split.test
    if cfg.max_users is not None:
        rng = np.random.default_rng(1234)
        test = test.take(np.sort(rng.choice(len(test), min(cfg.max_users, len(test)), replace=False)))
    say(f"seed {seed}: baseline {name} (leave-one-out)")
    t = time.perf_counter()
    ranks = BASELINES[name](ds, split.train, split.valid, test, cfg, seed)
    m = _metrics(ranks, np.ones(len(ranks), bool))
    m["train_s"] = time.perf_counter() - t
    say(f"seed {seed}: baseline {name} NDCG@10 {m['NDCG@10']:.4f} in {m['train_s']:.0f}s")
    return Row(f"LOO {name}", None, seed, m)


def _tasks(cfg: QualityConfig) -> list[tuple[int, str | None]]:
    """(seed, None) for each seed's stale-cloud variants, (seed, name) for each baseline run."""
    b_seeds = cfg.seeds if cfg.baseline_seeds is None else min(cfg.baseline_seeds, cfg.seeds)
    tasks: list[tuple[int, str | None]] = [(s, None) for s in range(cfg.seeds)]
    tasks += [(s, b) for s in range(b_seeds) for b in cfg.baselines]
    # Longest first, so the pool does not end on one long job: the seeds, then the
    # neural baselines, then the instant ones.
    return sorted(tasks, key=lambda t: (t[1] == "most-popular", t[1] is not None))


_progress = logging.getLogger("dcrec.simulator.bench.progress")


def _worker_progress() -> Callable[[str], None]:
    """A spawned worker's progress lines, to stderr like the parent's (its entry point sets this up)."""
    if not _progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        _progress.addHandler(handler)
        _progress.setLevel(logging.INFO)
        _progress.propagate = False
    return _progress.info


def _run_task(cfg: QualityConfig, task: tuple[int, str | None], say: Callable[[str], None],
              ds: Dataset | None = None) -> tuple[list[Row], dict[str, Any] | None]:
    ds = ds if ds is not None else load_dataset(cfg.dataset)
    seed, baseline = task
    if baseline is None:
        return run_seed(ds, cfg, seed, say)
    return [run_baseline(ds, cfg, seed, baseline, say)], None


def _worker(cfg: QualityConfig, task: tuple[int, str | None]) -> tuple[list[Row], dict[str, Any] | None]:
    if cfg.threads is None:
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.torch_threads()))
    return _run_task(cfg, task, _worker_progress())


def run(cfg: QualityConfig, say: Callable[[str], None] = lambda s: None
        ) -> tuple[list[Row], list[dict[str, Any]]]:
    """Every seed's variants and the baselines; with ``jobs`` > 1 in that many processes."""
    if cfg.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {cfg.jobs}")
    if cfg.device_candidates < 0:
        raise ValueError(f"device_candidates must be >= 0, got {cfg.device_candidates}")
    if cfg.neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {cfg.neighbours}")
    if cfg.neighbours and not all(0.0 <= w <= 1.0 for w in cfg.neighbour_weights):
        raise ValueError(f"neighbour_weights must be in [0, 1], got {cfg.neighbour_weights}")
    ds = load_dataset(cfg.dataset)
    say(ds.describe())
    with _workdir_lock(Path(cfg.workdir) / ds.name):
        return _run_locked(cfg, ds, say)


class WorkdirInUse(ValueError):
    """Another run holds the work directory (its models would be overwritten under it)."""


@contextmanager
def _workdir_lock(path: Path) -> Iterator[None]:
    """Hold ``path/.lock`` for the run: two runs writing the same models would corrupt them."""
    path.mkdir(parents=True, exist_ok=True)
    lock = path / ".lock"
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise WorkdirInUse(f"{path} is in use by another bench run (pid {holder}); "
                               "wait for it or pass another --workdir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_locked(cfg: QualityConfig, ds: Dataset, say: Callable[[str], None]
                ) -> tuple[list[Row], list[dict[str, Any]]]:
    tasks = _tasks(cfg)
    results: dict[tuple[int, str | None], tuple[list[Row], dict[str, Any] | None]] = {}
    if cfg.jobs == 1:
        for task in tasks:
            results[task] = _run_task(cfg, task, say, ds)
    else:
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(tasks)), mp_context=ctx) as pool:
            futures = {task: pool.submit(_worker, cfg, task) for task in tasks}
            for task, fut in futures.items():
                results[task] = fut.result()
    rows: list[Row] = []
    infos: list[dict[str, Any]] = []
    for seed in range(cfg.seeds):  # the same order whatever the number of jobs
        seed_rows, info = results[(seed, None)]
        rows += seed_rows
        infos.append(info or {})
        rows += [r for t, (rs, _) in results.items() if t[0] == seed and t[1] is not None for r in rs]
    return rows, infos
