"""SASRec: a small causal self-attention model over the user's history.

Scores candidate items by the dot product of the last position's hidden state
with the candidates' (shared, tied) item embeddings. Attention is written out
by hand (no fused kernels) so the ONNX export is plain MatMul/Softmax that
ONNX Runtime runs fast on a phone CPU.

Shapes: ``history`` (B, L) item ids, left-padded with 0, newest last;
``candidates`` (B, C) item ids; scores (B, C).

Example::

    model = SASRec(SASRecConfig(n_items=1682))
    scores = model.score(history, candidates)   # (B, C)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SASRecConfig:
    n_items: int
    max_len: int = 50  # history positions; longer histories keep the newest
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2  # on embeddings and attention; small data overfits quickly

    def validate(self) -> None:
        if self.n_items < 1 or self.max_len < 1 or self.layers < 1:
            raise ValueError("n_items, max_len and layers must be >= 1")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.scale = 1.0 / math.sqrt(cfg.dim // cfg.heads)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``x`` (B, L, D); ``mask`` (B, L, L) additive, 0 where attention is allowed.

        ``last_only``: queries from the newest position only -> (B, 1, D); what
        scoring needs from the final block (its keys and values still span the history).
        Heads are column blocks of the projections, each attended on its own: the
        same arithmetic as reshaping into (B, heads, L, D/heads), without the
        dynamic shape operations that a reshape adds to the exported graph.
        """
        d = x.shape[2]
        parts = self.qkv(x).split(d // self.heads, dim=2)  # q heads, then k heads, then v heads
        qs, ks, vs = parts[: self.heads], parts[self.heads: 2 * self.heads], parts[2 * self.heads:]
        if last_only:
            qs, mask = tuple(q[:, -1:] for q in qs), mask[:, -1:]
        ys = []
        for q, k, v in zip(qs, ks, vs, strict=True):
            att = (q @ k.transpose(1, 2)) * self.scale + mask
            ys.append(self.drop(torch.softmax(att, dim=-1)) @ v)
        return self.proj(torch.cat(ys, dim=2) if len(ys) > 1 else ys[0])


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or (B, 1, D) for the newest position when ``last_only``."""
        y = self.attn(self.ln1(x), mask, last_only)
        x = (x[:, -1:] if last_only else x) + self.drop(y)
        return x + self.drop(self.mlp(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """``history`` (B, L) with L <= max_len, left-padded -> hidden states (B, L, D)."""
        x, mask = self._embed(history)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)

    def encode_last(self, history: torch.Tensor) -> torch.Tensor:
        """The newest position's hidden state (B, D), equal to ``encode(history)[:, -1]``.

        The final block computes only that position: about a third less work
        per call, which is all that scoring candidates needs.
        """
        x, mask = self._embed(history)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        return self.ln(self.blocks[-1](x, mask, last_only=True))[:, 0]

    def _embed(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors (B, L, D) and the additive attention mask (B, L, L)."""
        length = history.shape[1]
        # Positions count from the newest item, so the last slot is always max_len-1.
        pos = torch.arange(length, device=history.device) + (self.cfg.max_len - length)
        x = self.item_emb(history) * math.sqrt(self.cfg.dim) + self.pos_emb(pos)[None]
        x = self.drop(x)
        keep = (history > 0)
        idx = torch.arange(length, device=history.device)
        causal = idx[None, :] <= idx[:, None]  # (L, L): query row sees keys up to itself
        allowed = causal[None] & keep[:, None, :]
        # Pad rows attend to themselves so softmax never sees an all-masked row.
        allowed = allowed | (idx[None, :] == idx[:, None])[None]
        return x, torch.where(allowed, 0.0, -1e9)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Logits over the whole catalogue at every position: (B, L, N+1)."""
        return self.encode(history) @ self.item_emb.weight.T

    def user_vector(self, history: torch.Tensor) -> torch.Tensor:
        """(B, D): the vector every candidate's embedding is dotted with (:meth:`score`)."""
        return self.encode_last(history)

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores (B, C) of ``candidates`` (B, C) given ``history`` (B, L)."""
        h = self.encode_last(history)  # (B, D), the newest position
        return (self.item_emb(candidates) * h[:, None, :]).sum(-1)

    def full_scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores (B, N+1) of the whole catalogue after the newest position (column 0 is padding)."""
        return self.encode_last(history) @ self.item_emb.weight.T


class CandidateScorer(nn.Module):
    """The exported graph: (history (B, L), candidates (B, C)) -> scores (B, C)."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.model.score(history, candidates)


def sequence_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the full catalogue at every non-pad position.

    ``inputs`` and ``targets`` (B, L), targets shifted one step ahead, 0 = ignore.
    Logits are computed only where a target exists: short sequences are mostly
    padding, and the (positions, N+1) product dominates the cost.
    """
    hidden = model.encode(inputs)  # (B, L, D)
    keep = targets > 0
    logits = hidden[keep] @ model.item_emb.weight.T  # (P, N+1)
    logits[:, 0] = -1e9  # padding is never an answer
    return F.cross_entropy(logits, targets[keep])
