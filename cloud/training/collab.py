"""Train a device reranker: on the cloud's own candidate lists, or on the usual baselines.

Objectives (``RerankTrainConfig.objective``):

* ``collab`` — collaborative training. Each training prefix comes with the
  cloud's top-N list for a stale view of the same history (what the device
  will hold); a listwise softmax over that list labels the true next item
  (inserted when the cloud missed it). Negatives are the cloud's hard ones.
* ``random`` — the same softmax over the target and N-1 uniformly random items.
* ``full`` — softmax over the whole catalogue (SASRec, GRU4Rec only).

``full_weight`` adds a full-catalogue term to ``collab`` (keeps the model's
global sense of items); ``distill_weight`` adds distillation from the cloud:
for each prefix the cloud ranks the *whole* prefix (what a request would
return), out of fold, and the device's softmax over that list is pulled
towards the cloud's own distribution over it, so the device learns what the
fresh cloud would say when it cannot ask; ``init_from`` warm-starts from another trained model,
e.g. fine-tuning a ``full`` model on cloud lists. Early stopping uses the
reranking NDCG@10 of each sequence's last prefix over a stale cloud list.

Example::

    gen = load_generator("runs/cloud")
    result = train_reranker("sasrec", split.train, gen, ds.n_items,
                            RerankTrainConfig(objective="collab"), "runs/dev")
    scorer = load_scorer("runs/dev")
    scorer.score_batch(histories, candidates)   # (B, C) numpy
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.cloud.training import archs
from dcrec.cloud.training.lists import (
    Prefixes,
    histories,
    prefixes,
    scored_cloud_lists,
    with_target,
)
from dcrec.shared.data import pad_left
from dcrec.shared.metrics import ranks_in_lists, summarize

log = logging.getLogger(__name__)

Objective = Literal["collab", "random", "full"]


@dataclass
class RerankTrainConfig:
    objective: Objective = "collab"
    candidates: int = 100  # list length per example: the cloud's top-N, or N sampled items
    lags: tuple[int, ...] = (0, 1, 2)  # staleness of the cloud list per prefix, drawn uniformly
    valid_lag: int = 2  # staleness of the validation lists (the device-cloud split's lag)
    full_weight: float = 0.0  # weight of an extra full-catalogue term in collab training
    # Distillation: weight of a soft-label term towards the cloud's distribution over its
    # fresh list for each prefix. The cloud's probabilities are its scores normalised to sum
    # to one when distill_temperature is 0 (count-like scores, e.g. co-occurrence votes),
    # else softmax(score / distill_temperature).
    distill_weight: float = 0.0
    distill_temperature: float = 0.0
    # A cloud list without the true next item: "insert" it (every example trains the
    # listwise term), or "ignore" the example in that term (it can only teach the model to
    # spot the inserted odd one out, a skill no real list rewards; the full term still sees it).
    missing_target: str = "insert"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without validation gain before stopping
    time_budget_s: float = 900.0  # stop after this much training wall time
    max_examples: int | None = None  # sample this many training prefixes (quick comparisons)
    valid_users: int = 3000  # validation prefixes (one per sequence), sampled
    seed: int = 0
    threads: int = 1  # torch intra-op threads; on shared cores one thread is fastest
    init_from: str | None = None  # a trained model directory to start from (same architecture)
    # Out-of-fold cloud lists: with a ``fit_generator``, users are split into this many folds
    # and each fold's lists come from a cloud fitted without it, so the target is in the
    # list about as often as at serving time (an in-sample cloud "remembers" the answer).
    folds: int = 1
    # Fit the out-of-fold clouds without each sequence's last item, the transitions validation
    # scores: otherwise the cloud's lists (above all distillation's soft labels) teach the
    # device the validation period's transitions of other users, and validation flatters it.
    folds_hold_out_valid: bool = False
    cache_dir: str | None = None  # where cloud lists are cached (default: out_dir/cache)
    model: dict[str, Any] = field(default_factory=dict)  # architecture config overrides

    def validate(self) -> None:
        if self.objective not in ("collab", "random", "full"):
            raise ValueError(f"objective must be collab, random or full, got {self.objective!r}")
        if self.candidates < 2 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("candidates must be >= 2, batch_size and epochs >= 1")
        if self.missing_target not in ("insert", "ignore"):
            raise ValueError(f"missing_target must be insert or ignore, got {self.missing_target!r}")
        if not self.lags or min(self.lags) < 0 or self.valid_lag < 0:
            raise ValueError("lags must be a non-empty tuple of values >= 0")
        if self.distill_weight < 0 or self.distill_temperature < 0:
            raise ValueError("distill_weight and distill_temperature must be >= 0")


@dataclass
class RerankResult:
    model_dir: Path
    arch: str
    best_epoch: int
    valid: dict[str, float]
    seconds: float
    history: list[dict[str, float]]


class TorchScorer:
    """numpy in, numpy out: ``score_batch(histories (B, L), candidates (B, C)) -> (B, C)``."""

    def __init__(self, model: nn.Module, batch: int = 512) -> None:
        self.model = model.eval()
        self.max_len = int(model.cfg.max_len)
        self.batch = batch

    def score_batch(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        h = np.asarray(histories, dtype=np.int64)[:, -self.max_len:]
        c = np.asarray(candidates, dtype=np.int64)
        out = np.empty(c.shape, dtype=np.float32)
        with torch.no_grad():
            for lo in range(0, h.shape[0], self.batch):
                hi = lo + self.batch
                # Leading all-padding columns change no score; cutting them saves time.
                width = max(int((h[lo:hi] > 0).sum(axis=1).max()), 1)
                out[lo:hi] = self.model.score(torch.from_numpy(h[lo:hi, h.shape[1] - width:]),
                                              torch.from_numpy(c[lo:hi])).numpy()
        return out

    def score_lists(self, hists: Sequence[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """Like :meth:`score_batch` for ragged histories (oldest first)."""
        return self.score_batch(pad_left(hists, self.max_len), candidates)


def load_scorer(model_dir: str | Path) -> TorchScorer:
    model, _ = archs.load(model_dir)
    return TorchScorer(model)


def rerank_ndcg(scorer: TorchScorer, hists: np.ndarray, lists: np.ndarray, targets: np.ndarray,
                ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """Metrics of the device-only reranking of ``lists`` (B, C), 0-padded; a target not in its list is a miss."""
    scores = scorer.score_batch(hists, np.where(lists > 0, lists, 1))
    scores = np.where(lists > 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(lists, order, axis=1)
    return summarize(ranks_in_lists(ranked, targets), ks)


def _loss(model: nn.Module, objective: Objective, full_weight: float, hist: torch.Tensor,
          targets: torch.Tensor, lists: torch.Tensor | None, n_candidates: int, n_items: int,
          gen: torch.Generator) -> torch.Tensor:
    if objective == "full":
        logits = model.full_scores(hist)
        logits[:, 0] = -1e9  # padding is never an answer
        return F.cross_entropy(logits, targets)
    if objective == "random":
        neg = torch.randint(1, n_items + 1, (hist.shape[0], n_candidates - 1), generator=gen)
        cands = torch.cat([targets[:, None], neg], dim=1)
        logits = model.score(hist, cands)
        # A sampled negative equal to the target is not a negative.
        logits[:, 1:] = logits[:, 1:].masked_fill(neg == targets[:, None], -1e9)
        return F.cross_entropy(logits, torch.zeros_like(targets))
    assert lists is not None
    cands, label = lists[:, :-1], lists[:, -1]
    logits = model.score(hist, cands.clamp(min=1)).masked_fill(cands == 0, -1e9)
    inside = label >= 0  # -1: the cloud missed the target and the example only trains the full term
    if inside.any():
        loss = F.cross_entropy(logits[inside], label[inside], reduction="sum") / label.shape[0]
    else:
        loss = logits.sum() * 0.0
    if full_weight > 0:
        full = model.full_scores(hist)
        full[:, 0] = -1e9
        loss = loss + full_weight * F.cross_entropy(full, targets)
    return loss


def teacher_probabilities(scores: np.ndarray, temperature: float = 0.0) -> np.ndarray:
    """(P, C) float32 soft labels from the cloud's scores (padding -inf gets 0).

    ``temperature`` 0: scores taken as non-negative weights and normalised
    (a row whose scores are all 0 or below becomes uniform over its items);
    otherwise a softmax of ``scores / temperature``.
    """
    finite = np.isfinite(scores)
    if temperature > 0:
        z = np.where(finite, scores / temperature, -np.inf)
        z = z - np.max(np.where(finite, z, -np.inf), axis=1, keepdims=True, initial=-np.inf)
        w = np.where(finite, np.exp(np.where(finite, z, 0.0)), 0.0)
    else:
        w = np.where(finite, np.maximum(np.where(finite, scores, 0.0), 0.0), 0.0)
        flat = w.sum(axis=1) <= 0
        w[flat] = finite[flat].astype(w.dtype)
    total = w.sum(axis=1, keepdims=True)
    return (w / np.where(total > 0, total, 1.0)).astype(np.float32)


def distill_loss(model: nn.Module, hist: torch.Tensor, items: torch.Tensor,
                 probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the device's softmax over the cloud's list against the cloud's probabilities."""
    logits = model.score(hist, items.clamp(min=1)).masked_fill(items == 0, -1e9)
    return -(probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train_reranker(arch: str, train_sequences: Sequence[np.ndarray],
                   cloud_generator: CandidateGenerator | None, n_items: int,
                   config: RerankTrainConfig, out_dir: str | Path,
                   progress: Callable[[int, float, dict[str, float]], None] | None = None,
                   fit_generator: Callable[[list[np.ndarray]], CandidateGenerator] | None = None,
                   ) -> RerankResult:
    """Train ``arch`` on ``train_sequences`` (item ids, oldest first); writes the model to ``out_dir``.

    ``fit_generator(sequences) -> generator`` refits the cloud on a subset of
    users, for out-of-fold training lists (``config.folds`` > 1).
    ``cloud_generator`` supplies the lists for ``collab`` training and for
    validation; without one, validation reranks random lists. The best epoch
    by validation reranking NDCG@10 is kept.
    """
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    if config.init_from:
        model, meta = archs.load(config.init_from)
        if meta["arch"] != arch:
            raise ValueError(f"init_from holds a {meta['arch']} model, not {arch}")
        model.train()
    else:
        model = archs.build(arch, n_items, config.model)
    if config.objective == "full" or config.full_weight > 0:
        if not archs.has_full_scores(model):
            raise ValueError(f"{arch} has no full-catalogue score; use objective collab or random")
    if config.objective == "collab" and cloud_generator is None:
        raise ValueError("collab training needs the cloud's candidate generator")
    if config.distill_weight > 0 and cloud_generator is None:
        raise ValueError("distillation needs the cloud's candidate generator")
    if config.distill_weight > 0 and (config.folds <= 1 or fit_generator is None):
        log.warning("distilling from a cloud fitted on these very sequences: its soft labels hold "
                    "the answers; use folds > 1 with a fit_generator (out-of-fold lists)")
    max_len = int(model.cfg.max_len)
    seqs = [np.asarray(s, dtype=np.int64) for s in train_sequences]

    # Each sequence's last prefix validates; the others train.
    allp = prefixes(seqs)
    last = np.r_[allp.seq[1:] != allp.seq[:-1], True]
    valid_p, train_p = allp.take(np.flatnonzero(last)), allp.take(np.flatnonzero(~last))
    if len(valid_p) > config.valid_users:
        valid_p = valid_p.take(np.sort(rng.choice(len(valid_p), config.valid_users, replace=False)))
    if config.max_examples is not None and len(train_p) > config.max_examples:
        train_p = train_p.take(np.sort(rng.choice(len(train_p), config.max_examples, replace=False)))
    train_h = histories(seqs, train_p, max_len)
    valid_h = histories(seqs, valid_p, max_len)
    cache = Path(config.cache_dir) if config.cache_dir else out / "cache"
    source = _ListSource(cloud_generator, fit_generator, seqs, config, cache)
    valid_l = _valid_lists(source, valid_p, config, n_items, rng)
    train_l = None
    if config.objective == "collab":
        assert cloud_generator is not None
        lags = rng.choice(np.asarray(config.lags), len(train_p))
        t0 = time.perf_counter()
        raw = source.lists(train_p, lags)
        if config.missing_target == "insert":
            lists, col = with_target(raw, train_p.targets)
        else:  # "ignore": the listwise term learns only where the list holds the answer
            hit = raw == train_p.targets[:, None]
            lists, col = raw, np.where(hit.any(axis=1), hit.argmax(axis=1), -1).astype(np.int64)
        # Store the label in an extra last column so one gather per batch fetches both.
        train_l = np.concatenate([lists, col[:, None]], axis=1)
        inside = float((raw == train_p.targets[:, None]).any(axis=1).mean())
        log.info("cloud lists for %d prefixes in %.0fs; target inside %.1f%%", len(train_p),
                 time.perf_counter() - t0, 100 * inside)
    teacher = None
    if config.distill_weight > 0:
        t0 = time.perf_counter()
        t_items, t_scores = source.lists(train_p, np.zeros(len(train_p), dtype=np.int64), scores=True)
        teacher = (t_items, teacher_probabilities(t_scores, config.distill_temperature))
        log.info("cloud teacher lists for %d prefixes in %.0fs", len(train_p), time.perf_counter() - t0)
    log.info("%s/%s: %d training prefixes, %d validation, %d parameters", arch, config.objective,
             len(train_p), len(valid_p), sum(p.numel() for p in model.parameters()))

    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_epoch, stale = -1.0, 0, 0
    best_metrics: dict[str, float] = {}
    trace: list[dict[str, float]] = []
    meta = {"train": asdict(config), "n_items": n_items}
    start = time.perf_counter()
    targets_t = torch.from_numpy(train_p.targets)
    train_lengths = (train_h > 0).sum(axis=1)
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, steps = 0.0, 0
        for idx in _batches(train_lengths, config.batch_size, rng):
            width = max(int(train_lengths[idx].max()), 1)
            hist = torch.from_numpy(train_h[idx, max_len - width:])
            lists_b = torch.from_numpy(train_l[idx]) if train_l is not None else None
            loss = _loss(model, config.objective, config.full_weight, hist, targets_t[idx], lists_b,
                         config.candidates, n_items, gen)
            if teacher is not None:
                loss = loss + config.distill_weight * distill_loss(
                    model, hist, torch.from_numpy(teacher[0][idx]), torch.from_numpy(teacher[1][idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        metrics = rerank_ndcg(TorchScorer(model), valid_h, valid_l, valid_p.targets)
        ndcg = metrics["NDCG@10"]
        trace.append({"epoch": epoch, "loss": total / max(steps, 1), **metrics})
        log.info("epoch %d loss %.4f valid rerank NDCG@10 %.4f", epoch, total / max(steps, 1), ndcg)
        if progress:
            progress(epoch, total / max(steps, 1), metrics)
        if ndcg > best:
            best, best_epoch, stale, best_metrics = ndcg, epoch, 0, metrics
            archs.save(model, out, {**meta, "best_epoch": epoch, "valid": metrics})
        else:
            stale += 1
        if stale >= config.patience or time.perf_counter() - start > config.time_budget_s:
            break
    archs.save(archs.load(out)[0], out, {**meta, "best_epoch": best_epoch, "valid": best_metrics,
                                         "trace": trace})
    return RerankResult(out, arch, best_epoch, best_metrics, time.perf_counter() - start, trace)


class _ListSource:
    """Cloud lists for prefixes: in-sample from one generator, or out-of-fold (folds fitted once, lazily)."""

    def __init__(self, generator: CandidateGenerator | None,
                 fit: Callable[[list[np.ndarray]], CandidateGenerator] | None,
                 seqs: list[np.ndarray], config: RerankTrainConfig, cache: Path) -> None:
        self.generator, self.fit, self.seqs, self.config, self.cache = generator, fit, seqs, config, cache
        self.folds = config.folds if fit is not None else 1
        self.fold_of = np.random.default_rng(config.seed + 17).integers(0, max(self.folds, 1), len(seqs))
        self._gens: dict[int, CandidateGenerator] = {}

    def _gen(self, k: int) -> CandidateGenerator:
        if k not in self._gens:
            assert self.fit is not None
            cut = 1 if self.config.folds_hold_out_valid else 0
            self._gens[k] = self.fit([s[:len(s) - cut] for i, s in enumerate(self.seqs)
                                      if self.fold_of[i] != k and len(s) - cut >= 2])
        return self._gens[k]

    def lists(self, p: Prefixes, lags: np.ndarray, scores: bool = False) -> Any:
        """(P, C) items; with ``scores``, (items, scores) with the cloud's scores (padding -inf)."""
        c = self.config.candidates
        if self.folds <= 1:
            assert self.generator is not None
            items, vals = scored_cloud_lists(self.generator, self.seqs, p, c, lags, cache_dir=self.cache)
            return (items, vals) if scores else items
        out = np.zeros((len(p), c), dtype=np.int64)
        val = np.full((len(p), c), -np.inf, dtype=np.float32)
        for k in range(self.folds):
            rows = np.flatnonzero(self.fold_of[p.seq] == k)
            if rows.size:
                out[rows], val[rows] = scored_cloud_lists(self._gen(k), self.seqs, p.take(rows), c,
                                                          lags[rows], cache_dir=self.cache)
        return (out, val) if scores else out


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
             pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of examples with similar history lengths.

    Every architecture's score ignores leading padding exactly, so a batch is
    cut to its longest history; grouping similar lengths (within pools of
    ``pool`` batches, so the order stays random) saves most of the padding.
    """
    perm = rng.permutation(lengths.size)
    out = []
    step = batch_size * pool
    for lo in range(0, perm.size, step):
        chunk = perm[lo:lo + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i:i + batch_size] for i in range(0, chunk.size, batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def _valid_lists(source: _ListSource, p: Prefixes, config: RerankTrainConfig, n_items: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(V, C) validation lists: the cloud's stale list, or random items without a cloud."""
    if source.generator is not None:
        return source.lists(p, np.full(len(p), config.valid_lag))
    lists = rng.integers(1, n_items + 1, (len(p), config.candidates))
    # Without a cloud every validation list holds its target, at a random place.
    lists[np.arange(len(p)), rng.integers(0, config.candidates, len(p))] = p.targets
    return lists


def backend_fitter(backend: str, dataset: object, workdir: str | Path,
                   options: dict[str, Any] | None = None) -> Callable[[list[np.ndarray]], CandidateGenerator]:
    """A ``fit_generator`` for :func:`train_reranker`: trains cloud backend ``backend`` on given sequences.

    Each call writes a model directory under ``workdir`` (fold0, fold1, ...).
    Cheap for ``cooccurrence`` (seconds); a neural backend costs a training run per fold.
    """
    from dcrec.cloud.models import backends

    calls = [0]

    def fit(sequences: list[np.ndarray]) -> CandidateGenerator:
        d = Path(workdir) / f"fold{calls[0]}"
        calls[0] += 1
        return backends.load_generator(backends.train(backend, dataset, sequences, d, options))  # type: ignore[arg-type]

    return fit
