"""The ``textrec`` backend: train a TextRec model directory and serve it.

A model directory holds ``model.pt`` (the best state dict), ``config.json``
(model config and the item-text cache key), ``text_emb.npy`` (N+1, 384) and,
written last, ``backend.json``. ``checkpoints/`` keeps the per-epoch state
that ``resume=True`` continues from.

Options (all optional): the fields of :class:`TextRecConfig` (``dim``,
``n_layers``, ``n_heads``, ``max_len``, ``dropout``, ...), of
:class:`TrainConfig` (``epochs``, ``batch_size``, ``lr``, ``seed``,
``time_budget_min``, ...), plus ``valid_users`` (how many users' newest
training item is held out to choose the epoch) and ``cache_dir`` (where item
text embeddings are cached).

Example::

    train(ds, split.train, Path("runs/textrec"), {"epochs": 50})
    gen = load_generator(Path("runs/textrec"))
    [c] = gen.generate([np.array([3, 17])], count=20)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcrec.cloud.models.backends import write_manifest
from dcrec.cloud.models.generator import CandidateList, checked_histories
from dcrec.cloud.models.text_embed import DEFAULT_MAX_TOKENS, ENCODERS, embed_texts
from dcrec.cloud.models.textrec.model import TextRecConfig, TextRecModel
from dcrec.cloud.models.textrec.train import TrainConfig, fit, left_pad
from dcrec.shared.data import Dataset

log = logging.getLogger(__name__)

NAME = "textrec"
EXTRA_OPTIONS = {"valid_users": 3000, "cache_dir": None, "text_encoder": "minilm"}


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig, dict[str, Any]]:
    """Options -> (model config fields, TrainConfig, extras); unknown keys are an error."""
    model_keys = {f.name for f in dataclasses.fields(TextRecConfig)} - {"n_items"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(options) - model_keys - train_keys - set(EXTRA_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown textrec options {sorted(unknown)}; "
            f"known: {sorted(model_keys | train_keys | set(EXTRA_OPTIONS))}"
        )
    model_opts = {k: v for k, v in options.items() if k in model_keys}
    train_cfg = TrainConfig(**{k: v for k, v in options.items() if k in train_keys})
    extras = {**EXTRA_OPTIONS, **{k: v for k, v in options.items() if k in EXTRA_OPTIONS}}
    return model_opts, train_cfg, extras


def holdout_valid(
    sequences: Sequence[np.ndarray], n_users: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Hold out the newest item of ``n_users`` random sequences (length >= 3).

    Returns (training sequences, validation histories, validation targets).
    Only a sample is held out so that most users keep their newest, most
    telling transition for training.
    """
    train = [np.asarray(s, dtype=np.int64) for s in sequences]
    eligible = np.flatnonzero([len(s) >= 3 for s in train])
    rng = np.random.default_rng([seed, 7])
    chosen = np.sort(rng.choice(eligible, size=min(n_users, len(eligible)), replace=False))
    hists, targets = [], []
    for i in chosen:
        s = train[i]
        hists.append(s[:-1])
        targets.append(int(s[-1]))
        train[i] = s[:-1]
    return train, hists, np.asarray(targets, dtype=np.int64)


def item_text_embeddings(dataset: Dataset, cache_dir: str | None,
                         encoder: str = "minilm") -> np.ndarray:
    """(N+1, D) embeddings of the catalogue texts by ``encoder``; row 0 (padding) is zero.

    ``minilm``: the sentence embedder (D=384); ``smollm2``: the generative LLM's
    mean-pooled hidden states (D=576).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown text_encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
    model_id, make = ENCODERS[encoder]
    vecs = embed_texts(list(dataset.catalogue.texts[1:]), cache_dir=cache_dir,
                       encoder=make(DEFAULT_MAX_TOKENS), model_id=model_id)
    return np.concatenate([np.zeros((1, vecs.shape[1]), np.float32), vecs])


def train(
    dataset: Dataset,
    train_sequences: list[np.ndarray],
    out_dir: Path,
    options: dict[str, Any],
    resume: bool = False,
) -> None:
    """Train on ``train_sequences`` and write a model directory to ``out_dir``."""
    model_opts, tcfg, extras = split_options(options)
    cfg = TextRecConfig(n_items=dataset.n_items, **model_opts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = None
    if cfg.use_text:
        text = item_text_embeddings(dataset, extras["cache_dir"], str(extras["text_encoder"]))
        cfg = dataclasses.replace(cfg, text_dim=int(text.shape[1]))

    seqs, v_hist, v_tgt = holdout_valid(train_sequences, int(extras["valid_users"]), tcfg.seed)
    warm = np.zeros(cfg.n_items + 1, dtype=bool)
    for s in seqs:
        warm[s] = True
    log.info("textrec: %d sequences, %d validation users, %d of %d items warm",
             len(seqs), len(v_tgt), int(warm[1:].sum()), cfg.n_items)

    torch.manual_seed(tcfg.seed)
    model = TextRecModel(cfg, text, warm)
    result = fit(model, seqs, v_hist, v_tgt, out_dir / "checkpoints", tcfg, resume=resume)

    state = torch.load(result.best_path, weights_only=True)
    torch.save(state, out_dir / "model.pt")
    if text is not None:
        np.save(out_dir / "text_emb.npy", text)
    (out_dir / "config.json").write_text(json.dumps({
        "model": dataclasses.asdict(cfg),
        "train": dataclasses.asdict(tcfg),
        "text_encoder": extras["text_encoder"] if cfg.use_text else None,
        "best_epoch": result.best_epoch,
        "valid_ndcg10": result.best_ndcg10,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 1),
        "cpu_seconds": round(result.cpu_seconds, 1),
        "stopped_by": result.stopped_by,
    }, indent=2))
    digest = hashlib.sha256((out_dir / "model.pt").read_bytes()).hexdigest()[:16]
    write_manifest(out_dir, NAME, version=f"{NAME}-{digest}", valid_ndcg10=result.best_ndcg10)


class TextRecGenerator:
    """Serves a trained TextRec model as a :class:`CandidateGenerator`."""

    name = NAME

    def __init__(self, model: TextRecModel, version: str, threads: int = 2):
        self.model = model.eval()
        self.version = version
        self.n_items = model.cfg.n_items
        self.threads = threads
        with torch.no_grad():
            self._table = model.item_table()  # (N+1, D), fixed until the next model

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """B histories -> (B, N+1) float32 scores; column 0 (padding) is -inf."""
        torch.set_num_threads(self.threads)
        width = max(1, min(self.model.cfg.max_len, max((len(h) for h in histories), default=1)))
        seq = torch.from_numpy(left_pad(histories, width))
        return self.model.score_last(seq, self._table).numpy()

    def generate(
        self, histories: Sequence[np.ndarray], count: int, exclude_seen: bool = True
    ) -> list[CandidateList]:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        histories = checked_histories(histories, self.n_items)
        if not histories:
            return []
        scores = self.score(histories)
        if exclude_seen:
            for i, h in enumerate(histories):
                scores[i, h] = -np.inf
        k = min(count, self.n_items)
        top = torch.topk(torch.from_numpy(scores), k, dim=1)
        out = []
        for items, vals in zip(top.indices.numpy(), top.values.numpy(), strict=True):
            keep = np.isfinite(vals)  # padding and excluded items score -inf
            out.append(CandidateList(items[keep].astype(np.int64), vals[keep].astype(np.float32)))
        return out


def load_generator(model_dir: Path) -> TextRecGenerator:
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "config.json").read_text())
    cfg = TextRecConfig(**meta["model"])
    text = np.load(model_dir / "text_emb.npy") if cfg.use_text else None
    state = torch.load(model_dir / "model.pt", weights_only=True)
    model = TextRecModel(cfg, text, state["warm"].numpy())
    model.load_state_dict(state)
    manifest = json.loads((model_dir / "backend.json").read_text())
    return TextRecGenerator(model, version=str(manifest["version"]),
                            threads=int(meta["train"].get("threads", 2)))
