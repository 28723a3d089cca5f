"""LoRA adapters for the generative backend's LLM: the layers, their file, merging them in.

Written out here rather than taken from a library: each chosen linear layer ``W``
(frozen) gains ``(alpha / rank) * B @ A`` with ``A`` (rank, in) small random and
``B`` (out, rank) zero, so training starts from the pretrained model exactly and only
``A`` and ``B`` learn. The adapters are saved alone (``adapters.pt``, a few MB) and
merged into ``W`` when the backend loads (its ``lora`` option), so inference costs
nothing extra. Training them is :mod:`dcrec.cloud.models.llm.finetune_lora`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTERS_FILE = "adapters.pt"


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank, so changing rank keeps the step size
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # linear layers (by name) that get adapters

    def validate(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0 or not self.targets:
            raise ValueError(f"bad LoRA config {self}")


class LoRALinear(nn.Module):
    """``base(x) + scale * dropout(x) @ A^T @ B^T``; ``A`` (r, in), ``B`` (out, r)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.drop(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    def delta(self) -> torch.Tensor:
        """(out, in) weight update this adapter stands for."""
        return (self.lora_b @ self.lora_a) * self.scale


def add_adapters(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze ``model`` and wrap its target linear layers; returns the wrapped names."""
    config.validate()
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in config.targets]
    if not names:
        raise ValueError(f"no linear layer named one of {config.targets}")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(getattr(parent, attr), config.rank, config.alpha, config.dropout))
    return names


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights, by parameter name."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if ".lora_" in n}


def save_adapters(model: nn.Module, config: LoRAConfig, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ADAPTERS_FILE
    torch.save({"lora": asdict(config), "meta": meta, "state": adapter_state(model)}, path)
    return path


@torch.no_grad()
def merge_saved_adapters(model: nn.Module, adapter_dir: Path) -> int:
    """Add saved adapters into ``model``'s plain linear weights; returns layers merged."""
    saved = torch.load(Path(adapter_dir) / ADAPTERS_FILE, map_location="cpu", weights_only=True)
    scale = saved["lora"]["alpha"] / saved["lora"]["rank"]
    state = saved["state"]
    layers = sorted({n.rsplit(".lora_", 1)[0] for n in state})
    for layer in layers:
        # Saved from the wrapped model: "<name>.lora_a"; the plain model has "<name>".
        linear = model.get_submodule(layer)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{layer}: not a linear layer in this model")
        delta = (state[f"{layer}.lora_b"] @ state[f"{layer}.lora_a"]) * scale
        linear.weight += delta.to(linear.weight.dtype)
    return len(layers)
