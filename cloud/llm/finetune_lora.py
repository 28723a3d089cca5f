"""LoRA fine-tuning of the generative backend's LLM on next-item titles (GPU advised).

Each training example is one cut of a training sequence: the prompt the
backend would build from the items before the cut (:mod:`dcrec.cloud.llm.prompt`),
and as the target the next item's (cut) title plus the end token. The loss
is the title tokens' cross-entropy; the prompt is not trained on.

LoRA, written out here rather than taken from a library: each chosen linear
layer ``W`` (frozen) gains ``(alpha / rank) * B @ A`` with ``A`` (rank, in)
small random and ``B`` (out, rank) zero, so training starts from the
pretrained model exactly and only ``A`` and ``B`` learn. The adapters are
saved alone (``adapters.pt``, a few MB) and merged into ``W`` when the
backend loads (``lora`` option), so inference costs nothing extra.

Usage::

    python -m dcrec.cloud.llm.finetune_lora --data beauty --out runs/llm-lora \\
        --steps 2000 --batch-size 16 --device cuda
    # then record it in a backend directory:
    cloud.backends.train("llm", ds, split.train, "runs/llm-ft", {"lora": "runs/llm-lora"})
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcrec.cloud.llm.prompt import PromptBuilder

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 50  # steps of linear warm-up: B starts at zero, early steps are noisy
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0


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


def make_examples(sequences: Sequence[np.ndarray], builder: PromptBuilder, n: int,
                  rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """``n`` (prompt ids, target ids) pairs from random cuts of random sequences."""
    usable = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) >= 2]
    if not usable:
        raise ValueError("no training sequence has two items")
    out = []
    for _ in range(n):
        seq = usable[rng.integers(len(usable))]
        cut = int(rng.integers(1, len(seq)))
        target = builder.title_ids[int(seq[cut])] + [builder.end_token]
        out.append((builder.build(seq[:cut]), target))
    return out


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input ids (B, L), attention mask (B, L), labels (B, L), -100 off-target)."""
    width = max(len(p) + len(t) for p, t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for b, (p, t) in enumerate(batch):
        seq = torch.tensor(p + t, dtype=torch.long)
        ids[b, : len(seq)] = seq
        mask[b, : len(seq)] = 1
        labels[b, len(p) : len(seq)] = torch.tensor(t, dtype=torch.long)
    return ids, mask, labels


def finetune(model: nn.Module, builder: PromptBuilder, sequences: Sequence[np.ndarray],
             lora: LoRAConfig, train: TrainConfig, pad_id: int, device: str = "cpu") -> list[float]:
    """Add adapters to ``model`` and train them; returns the loss of every step."""
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    add_adapters(model, lora)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(train.warmup, 1)))
    losses = []
    t0 = time.perf_counter()
    for step in range(train.steps):
        ids, mask, labels = collate(make_examples(sequences, builder, train.batch_size, rng), pad_id)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step % 50 == 0 or step == train.steps - 1:
            log.info("step %d/%d loss %.4f (%.1f s)", step + 1, train.steps,
                     np.mean(losses[-50:]), time.perf_counter() - t0)
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    from dcrec.cloud.llm.backend import LLMConfig, load_tokenizer, local_model_dir
    from dcrec.cloud.llm.prompt import tokenize_titles
    from dcrec.shared.data import load_dataset
    from dcrec.shared.splits import leave_one_out

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="beauty")
    p.add_argument("--out", required=True, help="folder for adapters.pt")
    p.add_argument("--model", default="", help="HF directory or .gguf ('' = bundled SmolLM2)")
    p.add_argument("--options", default="{}", help="JSON prompt options, the same as the backend's")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--rank", type=int, default=LoRAConfig.rank)
    p.add_argument("--alpha", type=float, default=LoRAConfig.alpha)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from transformers import AutoModelForCausalLM

    config = LLMConfig.from_options({**json.loads(args.options), "model": args.model})
    ds = load_dataset(args.data)
    sequences = leave_one_out(ds).train  # never the validation or test targets
    path = local_model_dir(config.model)
    tok = load_tokenizer(path)
    builder = PromptBuilder(tok, tokenize_titles(tok, ds.catalogue.titles, config.title_tokens),
                            config.prompt())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    lora = LoRAConfig(rank=args.rank, alpha=args.alpha)
    losses = finetune(model, builder, sequences, lora,
                      TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
                      pad, args.device)
    meta = {"data": args.data, "model": str(path), "prompt": asdict(config.prompt()),
            "steps": args.steps, "final_loss": float(np.mean(losses[-50:]))}
    out = save_adapters(model, lora, Path(args.out), meta)
    print(json.dumps({"adapters": str(out), **meta}, indent=2))


if __name__ == "__main__":
    main()
