"""LoRA fine-tuning of the generative backend's LLM on next-item titles (GPU advised).

Each training example is one cut of a training sequence: the prompt the
backend would build from the items before the cut (:mod:`dcrec.cloud.models.llm.prompt`),
and as the target the next item's (cut) title plus the end token. The loss
is the title tokens' cross-entropy; the prompt is not trained on.

The adapters themselves (layers, file, merging) are :mod:`dcrec.cloud.models.llm.lora`.

Usage::

    python -m dcrec.cloud.models.llm.finetune_lora --data beauty --out runs/llm-lora \\
        --steps 2000 --batch-size 16 --device cuda
    # then record it in a backend directory:
    cloud.backends.train("llm", ds, split.train, "runs/llm-ft", {"lora": "runs/llm-lora"})
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcrec.cloud.models.llm.lora import LoRAConfig, add_adapters, save_adapters
from dcrec.cloud.models.llm.prompt import PromptBuilder

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 50  # steps of linear warm-up: B starts at zero, early steps are noisy
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0


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
    from dcrec.cloud.models.llm.backend import LLMConfig, load_tokenizer, local_model_dir
    from dcrec.cloud.models.llm.prompt import tokenize_titles
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
