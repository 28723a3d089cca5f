"""Train a device reranker (SASRec) on the sequences the cloud has seen.

A plain loop: full-catalogue cross-entropy at every position, the last item of
each sequence held out for early stopping, the best epoch's weights kept.

Example::

    result = train_sasrec(split.train, n_items, TrainConfig(epochs=20), out_dir)
    result.checkpoint   # out_dir / "sasrec.pt"
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dcrec.cloud.training.sasrec import SASRec, SASRecConfig, sequence_loss
from dcrec.shared.data import pad_left
from dcrec.shared.metrics import ranks_from_scores, summarize

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without validation gain before stopping
    time_budget_s: float = 600.0  # stop after this much training wall time
    seed: int = 0
    threads: int = 2  # torch intra-op threads; the machines have 2 cores
    model: dict[str, object] = field(default_factory=dict)  # SASRecConfig overrides


@dataclass
class TrainResult:
    checkpoint: Path
    config: SASRecConfig
    best_epoch: int
    valid: dict[str, float]
    seconds: float


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length in random order: each batch pads only to its own longest window.

    Short-sequence data (Amazon Beauty's median user has 6 items) would
    otherwise spend most attention compute on padding.
    """
    shuffled = rng.permutation(lengths.size)
    order = shuffled[np.argsort(lengths[shuffled], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, order.size, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def windows(seqs: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut long sequences into windows of max_len+1 items (overlapping by one) so no event is wasted."""
    out = []
    for s in seqs:
        if len(s) < 2:
            continue
        end = len(s)
        while end > 1:
            out.append(s[max(0, end - max_len - 1):end])
            end -= max_len
    return out


def _evaluate(model: SASRec, histories: list[np.ndarray], targets: np.ndarray,
              batch: int = 512) -> dict[str, float]:
    model.eval()
    ranks = []
    with torch.no_grad():
        for i in range(0, len(histories), batch):
            h = pad_left(histories[i:i + batch], model.cfg.max_len)
            logits = (model.encode(torch.from_numpy(h))[:, -1] @ model.item_emb.weight.T).numpy()
            seen = np.zeros_like(logits, dtype=bool)
            rows = np.repeat(np.arange(h.shape[0]), h.shape[1])
            seen[rows, h.ravel()] = True
            ranks.append(ranks_from_scores(logits, targets[i:i + batch], exclude=seen))
    model.train()
    return summarize(np.concatenate(ranks)) if ranks else {}


def train_sasrec(sequences: Sequence[np.ndarray], n_items: int, config: TrainConfig,
                 out_dir: str | Path,
                 progress: Callable[[int, float, dict[str, float]], None] | None = None) -> TrainResult:
    """Train on ``sequences`` (item ids, oldest first); writes sasrec.pt and sasrec.json to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    torch.set_num_threads(config.threads)
    mcfg = SASRecConfig(n_items=n_items, **config.model)  # type: ignore[arg-type]
    model = SASRec(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    usable = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) >= 3]
    if not usable:
        raise ValueError("no training sequence has 3 or more items")
    valid_hist = [s[:-1] for s in usable]
    valid_tgt = np.array([s[-1] for s in usable], dtype=np.int64)
    if len(valid_hist) > 5000:  # a fixed sample keeps validation cheap on big data
        pick = rng.choice(len(valid_hist), 5000, replace=False)
        valid_hist = [valid_hist[i] for i in pick]
        valid_tgt = valid_tgt[pick]
    train_seqs = windows([s[:-1] for s in usable], mcfg.max_len)
    lengths = np.array([len(w) for w in train_seqs])
    log.info("SASRec: %d training windows, %d validation users, %d parameters",
             len(train_seqs), len(valid_tgt), sum(p.numel() for p in model.parameters()))

    ckpt = out / "sasrec.pt"
    best, best_epoch, stale = -1.0, 0, 0
    best_metrics: dict[str, float] = {}
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        total, steps = 0.0, 0
        for idx in length_batches(lengths, config.batch_size, rng):
            batch = torch.from_numpy(pad_left([train_seqs[i] for i in idx], int(lengths[idx].max())))
            loss = sequence_loss(model, batch[:, :-1], batch[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        metrics = _evaluate(model, valid_hist, valid_tgt)
        ndcg = metrics.get("NDCG@10", 0.0)
        log.info("epoch %d loss %.4f valid NDCG@10 %.4f HR@10 %.4f", epoch, total / steps, ndcg,
                 metrics.get("HR@10", 0.0))
        if progress:
            progress(epoch, total / steps, metrics)
        if ndcg > best:
            best, best_epoch, stale, best_metrics = ndcg, epoch, 0, metrics
            torch.save(model.state_dict(), ckpt)
        else:
            stale += 1
        if stale >= config.patience or time.perf_counter() - start > config.time_budget_s:
            break
    (out / "sasrec.json").write_text(json.dumps(
        {"model": asdict(mcfg), "train": asdict(config), "best_epoch": best_epoch,
         "valid": best_metrics}, indent=2))
    return TrainResult(ckpt, mcfg, best_epoch, best_metrics, time.perf_counter() - start)


def trained_with(meta_path: str | Path, config: object) -> bool:
    """Whether ``meta_path`` (``sasrec.json``, or a reranker's metadata) records a finished
    training run with the settings ``config`` (a dataclass), so the model can be reused."""
    try:
        recorded = json.loads(Path(meta_path).read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    current = json.loads(json.dumps(asdict(config)))  # type: ignore[call-overload]
    # A setting added after the model was trained matches when it holds its default
    # (the run behaved as the default does), so new options do not void old models.
    try:
        defaults = json.loads(json.dumps(asdict(type(config)())))  # type: ignore[call-overload]
    except TypeError:  # a config without defaults for every field
        defaults = {}
    for key in set(current) - set(recorded):
        if key in defaults and current[key] == defaults[key]:
            recorded[key] = current[key]
    return bool(recorded == current)


def load_sasrec(model_dir: str | Path) -> SASRec:
    """Load the best weights written by :func:`train_sasrec` (weights only)."""
    d = Path(model_dir)
    meta = json.loads((d / "sasrec.json").read_text())
    model = SASRec(SASRecConfig(**meta["model"]))
    model.load_state_dict(torch.load(d / "sasrec.pt", weights_only=True))
    model.eval()
    return model
