"""Leave-one-out baselines trained by the harness itself (fresh history, full catalogue).

Each baseline is ``fn(ds, train, valid, test, cfg, seed) -> ranks`` (M,) of the
test targets among all items, seen items excluded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.shared.data import Dataset
from dcrec.shared.metrics import ranks_from_scores
from dcrec.shared.splits import EvalSet
from dcrec.simulator.bench.scoring import seen_mask, srm_full_scores

Baseline = Callable[[Dataset, list[np.ndarray], EvalSet, EvalSet, Any, int], np.ndarray]


def most_popular(ds: Dataset, train: list[np.ndarray], valid: EvalSet, test: EvalSet,
                 cfg: Any, seed: int) -> np.ndarray:
    pop = np.bincount(np.concatenate(train + [valid.targets]), minlength=ds.n_items + 1)
    pop = pop.astype(np.float64) + np.linspace(0, 1e-6, pop.size)[::-1]  # break ties by id
    ranks = np.empty(len(test), dtype=np.int64)
    for lo in range(0, len(test), 1024):
        hi = min(len(test), lo + 1024)
        scores = np.broadcast_to(pop, (hi - lo, pop.size))
        ranks[lo:hi] = ranks_from_scores(scores, test.targets[lo:hi],
                                         exclude=seen_mask(test.histories[lo:hi], ds.n_items))
    return ranks


def _with_valid(train: list[np.ndarray], valid: EvalSet) -> list[np.ndarray]:
    """Training sequences ending in the validation target: trainers hold out each last item."""
    seqs = [np.append(h, t) for h, t in zip(valid.histories, valid.targets, strict=True)]
    in_valid = set(valid.users.tolist())
    return seqs + [s for u, s in enumerate(train) if u not in in_valid and len(s) >= 2]


# The public SASRec+SS reference for Amazon Beauty (eSASRec benchmark, arXiv 2508.06450,
# leave-one-out, full catalogue: NDCG@10 0.0531): one block, one head, d=64, dropout 0.2,
# sampled softmax over 256 uniform negatives, up to 200 epochs with patience 50, Adam 1e-3.
SASREC_REFERENCE: dict[str, Any] = {
    "use_text": False, "id_dropout": 0.0, "n_layers": 1, "n_heads": 1, "dim": 64, "ffn_mult": 1,
    "dropout": 0.2, "loss": "sampled", "n_negatives": 256, "lr": 1e-3, "batch_size": 128,
    "epochs": 200, "patience": 50,
}


def _backend_ranks(ds: Dataset, gen: Any, test: EvalSet) -> np.ndarray:
    from dcrec.cloud.models.generator import catalogue_scores

    ranks = np.empty(len(test), dtype=np.int64)
    for lo in range(0, len(test), 512):
        hi = min(len(test), lo + 512)
        scores = catalogue_scores(gen, test.histories[lo:hi])
        ranks[lo:hi] = ranks_from_scores(scores, test.targets[lo:hi],
                                         exclude=seen_mask(test.histories[lo:hi], ds.n_items))
    return ranks


def _trained_backend(ds: Dataset, train: list[np.ndarray], valid: EvalSet, cfg: Any, seed: int,
                     name: str, backend: str, options: dict[str, Any]) -> Any:
    """``backend`` trained on the training sequences ending in the validation targets, cached
    in the work directory with its settings (``--reuse``)."""
    from dcrec.simulator.bench.scoring import trained_backend

    out = Path(cfg.workdir) / ds.name / f"seed{seed}" / f"loo-{name}"
    return trained_backend(ds, backend, options, _with_valid(train, valid), out, cfg.reuse)


def sasrec(ds: Dataset, train: list[np.ndarray], valid: EvalSet, test: EvalSet,
           cfg: Any, seed: int) -> np.ndarray:
    """The reproduced SASRec+SS reference (:data:`SASREC_REFERENCE`)."""
    options = {**SASREC_REFERENCE, "seed": seed, "threads": cfg.torch_threads(),
               "epochs": min(SASREC_REFERENCE["epochs"], cfg.device_epochs),
               "time_budget_min": 150.0}  # to convergence: patience ends it first
    return _backend_ranks(ds, _trained_backend(ds, train, valid, cfg, seed, "sasrec", "textrec", options),
                          test)


def cloud(ds: Dataset, train: list[np.ndarray], valid: EvalSet, test: EvalSet,
          cfg: Any, seed: int) -> np.ndarray:
    """The harness's cloud backend (``--cloud-backend``, its options) on the fresh full history,
    seeded with the harness's seed where the backend takes one (so seeds vary the cloud too)."""
    options = dict(cfg.cloud_options)
    if cfg.cloud_backend in ("ensemble", "textrec"):
        options.setdefault("seed", seed)
    return _backend_ranks(ds, _trained_backend(ds, train, valid, cfg, seed, "cloud", cfg.cloud_backend,
                                               options), test)


def sasrec_device(ds: Dataset, train: list[np.ndarray], valid: EvalSet, test: EvalSet,
                  cfg: Any, seed: int) -> np.ndarray:
    """The device's SASRec architecture and training (the harness's device model), fresh history."""
    from dcrec.cloud.training.train import load_sasrec, train_sasrec, trained_with

    out = Path(cfg.workdir) / ds.name / f"seed{seed}" / "loo-sasrec-device"
    tc = cfg.device_train_config(seed)
    if not (cfg.reuse and trained_with(out / "sasrec.json", tc)):
        train_sasrec(_with_valid(train, valid), ds.n_items, tc, out)
    model = load_sasrec(out)
    ranks = np.empty(len(test), dtype=np.int64)
    for lo, hi, scores in srm_full_scores(model, test.histories):
        ranks[lo:hi] = ranks_from_scores(scores, test.targets[lo:hi],
                                         exclude=seen_mask(test.histories[lo:hi], ds.n_items))
    return ranks


def gru4rec(ds: Dataset, train: list[np.ndarray], valid: EvalSet, test: EvalSet,
            cfg: Any, seed: int) -> np.ndarray:
    """GRU4Rec with cross-entropy over the full catalogue at each training prefix."""
    import torch

    from dcrec.cloud.training import archs
    from dcrec.cloud.training.collab import RerankTrainConfig, train_reranker
    from dcrec.cloud.training.train import trained_with
    from dcrec.shared.data import pad_left

    out = Path(cfg.workdir) / ds.name / f"seed{seed}" / "loo-gru4rec"
    rc = RerankTrainConfig(objective="full", epochs=cfg.device_epochs,
                           time_budget_s=cfg.device_time_budget_s, seed=seed,
                           batch_size=cfg.device_batch_size, patience=cfg.device_patience,
                           threads=cfg.torch_threads(),
                           # a quick look (a user sample) trains on a sample too
                           max_examples=None if cfg.max_users is None else 50 * cfg.max_users,
                           model={k: v for k, v in cfg.device_model.items() if k == "dim"})
    if not (cfg.reuse and trained_with(out / "reranker.json", rc)):
        train_reranker("gru4rec", _with_valid(train, valid), None, ds.n_items, rc, out)
    model, _ = archs.load(out)
    ranks = np.empty(len(test), dtype=np.int64)
    with torch.no_grad():
        for lo in range(0, len(test), 256):
            hi = min(len(test), lo + 256)
            h = torch.from_numpy(pad_left(test.histories[lo:hi], model.cfg.max_len))  # type: ignore[attr-defined]
            scores = model.full_scores(h).numpy()  # type: ignore[operator]
            ranks[lo:hi] = ranks_from_scores(scores, test.targets[lo:hi],
                                             exclude=seen_mask(test.histories[lo:hi], ds.n_items))
    return ranks


BASELINES: dict[str, Baseline] = {
    "most-popular": most_popular,
    "sasrec": sasrec,
    "sasrec-device": sasrec_device,
    "gru4rec": gru4rec,
    "cloud": cloud,
}
