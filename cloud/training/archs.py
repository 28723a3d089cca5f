"""The device reranker architectures by name, and their files on disk.

Every architecture is an ``nn.Module`` with ``cfg`` (a dataclass with at least
``n_items`` and ``max_len``), ``item_emb`` (the (N+1, D) item embedding table)
and ``score(history (B, L), candidates (B, C)) -> (B, C)``; those with a cheap
whole-catalogue score also have ``full_scores(history) -> (B, N+1)``. They all
export to the same ONNX signature, so the device runs any of them.

A trained model directory holds ``reranker.pt`` (weights) and
``reranker.json`` (``{"arch": ..., "model": {config}, ...}``).

Example::

    model = build("gru4rec", n_items=12101, options={"dim": 32})
    save(model, "runs/dev", extra={"objective": "collab"})
    model, meta = load("runs/dev")
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcrec.cloud.training.din import DIN, DINConfig
from dcrec.cloud.training.gru4rec import GRU4Rec, GRU4RecConfig
from dcrec.cloud.training.sasrec import SASRec, SASRecConfig
from dcrec.shared.fileio import write_atomic

ARCHS: dict[str, tuple[type[nn.Module], type]] = {
    "sasrec": (SASRec, SASRecConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "din": (DIN, DINConfig),
}

WEIGHTS = "reranker.pt"
META = "reranker.json"


def build(arch: str, n_items: int, options: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised model; ``options`` override config fields (unknown ones are an error)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown reranker architecture {arch!r}; choose one of {sorted(ARCHS)}")
    cls, cfg_cls = ARCHS[arch]
    options = dict(options or {})
    known = set(cfg_cls.__dataclass_fields__) - {"n_items"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown {arch} options {sorted(unknown)}; known: {sorted(known)}")
    return cls(cfg_cls(n_items=n_items, **options))


def arch_of(model: nn.Module) -> str:
    for name, (cls, _) in ARCHS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered reranker architecture")


def has_full_scores(model: nn.Module) -> bool:
    return callable(getattr(model, "full_scores", None))


def save(model: nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights and metadata; the metadata is written last so a half-written directory never loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / WEIGHTS)
    meta = {"arch": arch_of(model), "model": asdict(model.cfg), **(extra or {})}  # type: ignore[call-overload]
    write_atomic(out / META, json.dumps(meta, indent=2, default=str))
    return out


def load(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) from a directory written by :func:`save`."""
    d = Path(model_dir)
    try:
        meta = json.loads((d / META).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{d}: no {META}; not a trained reranker directory") from e
    cfg = dict(meta["model"])
    n_items = int(cfg.pop("n_items"))
    model = build(meta["arch"], n_items, cfg)
    model.load_state_dict(torch.load(d / WEIGHTS, weights_only=True))
    model.eval()
    return model, meta
