"""The training loop for :class:`~dcrec.cloud.models.textrec.model.TextRecModel`.

Plain loop, SASRec-CE style: every position of a training sequence predicts
the next item with a softmax over the whole catalogue. After each epoch the
loop measures NDCG@10 on a validation set (seen items excluded), saves a
checkpoint (model, optimizer, epoch, early-stopping state) and keeps the best
weights; ``resume=True`` continues from the last checkpoint. Runs are
deterministic for a given seed: the shuffle and the dropout of epoch ``e``
are seeded from ``(seed, e)``, so a resumed run repeats an uninterrupted one.

Example::

    result = fit(model, train_seqs, valid_hists, valid_targets, Path("ckpt"), TrainConfig())
    model.load_state_dict(torch.load(result.best_path, weights_only=True))
"""

from __future__ import annotations

import ctypes
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dcrec.cloud.models.textrec.model import TextRecModel
from dcrec.shared.fileio import replacing
from dcrec.shared.metrics import ranks_from_scores, summarize

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


@dataclass
class TrainConfig:
    epochs: int = 200  # an upper bound; early stopping usually ends training first
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    seed: int = 0
    time_budget_min: float = 40.0  # stop (keeping the best weights) once an epoch would pass this
    threads: int = 1  # torch intra-op threads: on a shared CPU two threads spin-wait and run slower than one
    eval_batch: int = 512
    # ``full``: softmax over the whole catalogue at every position; ``sampled``: over the
    # target and ``n_negatives`` uniform random items drawn for each position (SASRec+SS).
    loss: str = "full"
    n_negatives: int = 256
    all_windows: bool = True  # cut long sequences into several windows (else the newest only)

    def __post_init__(self) -> None:
        if self.loss not in ("full", "sampled"):
            raise ValueError(f"loss must be 'full' or 'sampled', got {self.loss!r}")
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {self.n_negatives}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.threads < 1:
            raise ValueError("epochs, batch_size, patience and threads must be >= 1")
        if self.lr <= 0 or self.time_budget_min <= 0:
            raise ValueError("lr and time_budget_min must be > 0")


@dataclass
class FitResult:
    best_path: Path
    best_epoch: int
    best_ndcg10: float
    epochs_run: int
    train_seconds: float  # wall clock, all sessions of a resumed run
    cpu_seconds: float  # CPU time of this process (load-independent cost)
    stopped_by: str  # "patience", "epochs" or "time"


def left_pad(histories: Sequence[np.ndarray], width: int) -> np.ndarray:
    """B histories -> (B, W) int64, the newest ``width`` items right-aligned, 0 before."""
    out = np.zeros((len(histories), width), dtype=np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-width:]
        if len(h):
            out[i, width - len(h) :] = h
    return out


def _trim(batch: np.ndarray) -> np.ndarray:
    """Drop leading columns that are padding in every row (cheaper attention)."""
    nonzero = (batch != 0).any(axis=0)
    first = int(nonzero.argmax()) if nonzero.any() else batch.shape[1] - 1
    return batch[:, first:]


@torch.no_grad()
def rank_targets(model: TextRecModel, histories: Sequence[np.ndarray], targets: np.ndarray,
                 exclude_seen: bool = True, batch_size: int = 512) -> np.ndarray:
    """(M,) 0-based full-catalogue ranks of ``targets`` given ``histories``."""
    was_training = model.training
    model.eval()
    table = model.item_table()
    ranks = []
    for s in range(0, len(histories), batch_size):
        hs = histories[s : s + batch_size]
        seq = torch.from_numpy(_trim(left_pad(hs, model.cfg.max_len)))
        scores = model.score_last(seq, table).numpy()
        exclude = None
        if exclude_seen:
            exclude = np.zeros(scores.shape, dtype=bool)
            for i, h in enumerate(hs):
                exclude[i, h] = True
        ranks.append(ranks_from_scores(scores, targets[s : s + batch_size], exclude))
    model.train(was_training)
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def evaluate(model: TextRecModel, histories: Sequence[np.ndarray], targets: np.ndarray,
             exclude_seen: bool = True) -> dict[str, float]:
    """HR@k, NDCG@k (k = 5, 10, 20) and MRR over the full catalogue."""
    return summarize(rank_targets(model, histories, np.asarray(targets), exclude_seen))


def _windows(sequences: Sequence[np.ndarray], max_len: int, all_windows: bool = True) -> np.ndarray:
    """(S, max_len + 1) training windows of the sequences of length >= 2.

    ``all_windows``: a sequence longer than ``max_len + 1`` is cut into windows of
    ``max_len + 1`` items from its end backwards, overlapping by one, so every event is
    a target once (MovieLens users have hundreds); else only the newest window is kept.
    """
    usable: list[np.ndarray] = []
    for s in sequences:
        if len(s) < 2:
            continue
        end = len(s)
        while end > 1:
            usable.append(s[max(0, end - max_len - 1) : end])
            end -= max_len
            if not all_windows:
                break
    return left_pad(usable, max_len + 1)


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of row indices, each of similar lengths (little padding).

    Rows are shuffled, sorted by length within chunks of 64 batches, cut into
    batches, and the batches shuffled: random enough for SGD while a batch of
    short histories is not padded to the longest one in the data.
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * 64
    batches: list[np.ndarray] = []
    for c in range(0, len(order), chunk):
        idx = order[c : c + chunk]
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches.extend(idx[i : i + batch_size] for i in range(0, len(idx), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def keep_freed_memory() -> None:
    """Ask glibc to keep large freed blocks instead of returning them to the OS.

    Each batch allocates several (positions x catalogue) logit matrices of
    tens of MB; by default glibc maps and unmaps each one, and the page faults
    of re-touching them cost about a third of the CPU time of an epoch. A
    process-wide setting, so only trainers call it; elsewhere it is a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)


def _sampled_loss(h: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor, table: torch.Tensor,
                  n_negatives: int) -> torch.Tensor:
    """Sampled softmax: each position's target against its own ``n_negatives`` uniform items.

    ``h`` (B, L, D), ``tgt`` (B, L) with 0 at padding; negatives (P, K) are drawn from
    1..N for every real position; a negative equal to its position's target is masked out.
    """
    hp, tp = h[mask], tgt[mask]  # (P, D), (P,)
    neg = torch.randint(1, table.shape[0], (hp.shape[0], n_negatives))
    pos_logit = (hp * table[tp]).sum(-1, keepdim=True)  # (P, 1)
    neg_logit = torch.einsum("pd,pkd->pk", hp, table[neg])  # (P, K)
    neg_logit = neg_logit.masked_fill(neg == tp.unsqueeze(1), -torch.inf)
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def fit(
    model: TextRecModel,
    train_sequences: Sequence[np.ndarray],
    valid_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    ckpt_dir: Path,
    cfg: TrainConfig,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` in place; returns where the best weights are.

    ``train_sequences``: item-id arrays, oldest first. ``valid_*``: histories
    and next items for early stopping. Checkpoints go to ``ckpt_dir``.
    """
    torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, best_path = ckpt_dir / CHECKPOINT, ckpt_dir / BEST
    signature = {"model": asdict(model.cfg), "train": asdict(cfg)}
    sig_path = ckpt_dir / "run.json"

    torch.manual_seed(cfg.seed)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, best, best_epoch, bad, elapsed, cpu, done = 0, -1.0, -1, 0, 0.0, 0.0, ""
    if resume and ckpt_path.is_file():
        old = json.loads(sig_path.read_text()) if sig_path.is_file() else None
        if old is not None and old["model"] != signature["model"]:
            raise ValueError(f"{ckpt_dir}: checkpoint was trained with another model config")
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        start_epoch = int(state["epoch"]) + 1
        best, best_epoch = float(state["best_ndcg10"]), int(state["best_epoch"])
        bad, done = int(state["bad_epochs"]), str(state["done"])
        elapsed, cpu = float(state["elapsed_s"]), float(state["cpu_s"])
        log.info("resuming at epoch %d (best NDCG@10 %.4f at epoch %d)", start_epoch, best, best_epoch)
    sig_path.write_text(json.dumps(signature, indent=2))

    windows = _windows(train_sequences, model.cfg.max_len, cfg.all_windows)
    lengths = (windows != 0).sum(axis=1)
    valid_targets = np.asarray(valid_targets, dtype=np.int64)
    budget_s = cfg.time_budget_min * 60.0
    last = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        if done:
            break
        last = epoch
        t0, c0 = time.perf_counter(), time.process_time()
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        batches = _batches(lengths, cfg.batch_size, rng)
        total_loss, total_n = 0.0, 0
        for rows in batches:
            batch = _trim(windows[rows])
            seq = torch.from_numpy(batch[:, :-1])
            tgt = torch.from_numpy(batch[:, 1:])
            id_keep = None
            if model.cfg.use_id and model.cfg.id_dropout > 0:
                id_keep = torch.rand(model.cfg.n_items + 1) >= model.cfg.id_dropout
            table = model.item_table(id_keep)
            h = model(seq, table)  # (B, L, D)
            mask = tgt > 0
            if cfg.loss == "full":
                logits = h[mask] @ table.T  # (P, N+1): full-catalogue softmax
                logits[:, 0] = -torch.inf
                loss = F.cross_entropy(logits, tgt[mask])
            else:
                loss = _sampled_loss(h, tgt, mask, table, cfg.n_negatives)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            n_pos = int(mask.sum())
            total_loss += float(loss.detach()) * n_pos
            total_n += n_pos
        train_s = time.perf_counter() - t0
        ndcg10 = evaluate(model, valid_histories, valid_targets)["NDCG@10"]
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        cpu += time.process_time() - c0
        if ndcg10 > best:
            best, best_epoch, bad = ndcg10, epoch, 0
            _atomic_torch_save(model.state_dict(), best_path)
        else:
            bad += 1
        log.info(
            "epoch %d loss %.4f valid NDCG@10 %.4f (best %.4f @%d) %.1f it/s %.0f s",
            epoch, total_loss / max(total_n, 1), ndcg10, best, best_epoch,
            len(batches) / train_s, epoch_s,
        )
        if bad >= cfg.patience:
            done = "patience"
        elif elapsed + epoch_s > budget_s:
            done = "time"
        _atomic_torch_save(
            {"model": model.state_dict(), "optim": optim.state_dict(), "epoch": epoch,
             "best_ndcg10": best, "best_epoch": best_epoch, "bad_epochs": bad,
             "elapsed_s": elapsed, "cpu_s": cpu, "done": done},
            ckpt_path,
        )
    if not best_path.is_file():  # zero epochs ran (e.g. epochs already reached)
        _atomic_torch_save(model.state_dict(), best_path)
    stopped = done or "epochs"
    log.info("training stopped (%s) after epoch %d; best NDCG@10 %.4f at epoch %d",
             stopped, last, best, best_epoch)
    return FitResult(best_path, best_epoch, best, last + 1, elapsed, cpu, stopped)
