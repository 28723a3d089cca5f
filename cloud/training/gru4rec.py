"""GRU4Rec: a one-layer GRU over the user's history, scored against tied item embeddings.

The exported graph takes left-padded histories (padding first, newest last).
A GRU run over leading padding would drift from its zero state, so the model
rotates each row into right-padded form (items first) with a gather, runs the
GRU, and reads the hidden state at the row's last real item. The score does
not depend on how much padding precedes the history, which keeps the ONNX
graph's dynamic history axis exact.

Shapes: ``history`` (B, L) item ids, left-padded with 0; ``candidates`` (B, C);
scores (B, C).

Example::

    model = GRU4Rec(GRU4RecConfig(n_items=12101))
    scores = model.score(history, candidates)   # (B, C)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GRU4RecConfig:
    n_items: int
    max_len: int = 50  # history positions; longer histories keep the newest
    dim: int = 64
    dropout: float = 0.2  # on the input embeddings; small data overfits quickly

    def validate(self) -> None:
        if self.n_items < 1 or self.max_len < 1 or self.dim < 1:
            raise ValueError("n_items, max_len and dim must be >= 1")


class GRU4Rec(nn.Module):
    def __init__(self, cfg: GRU4RecConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.dim, batch_first=True)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        """``history`` (B, L) left-padded -> the state after the newest item (B, D)."""
        b, length = history.shape
        lengths = (history > 0).sum(dim=1)  # (B,)
        # Row b's items sit at columns L-len_b .. L-1; read them from column 0 on.
        idx = (torch.arange(length, device=history.device)[None, :] + (length - lengths)[:, None]) % length
        right = torch.gather(history, 1, idx)  # items first, padding after
        x = self.drop(self.item_emb(right))
        out, _ = self.gru(x)  # (B, L, D); positions past the row's length are ignored
        last = (lengths - 1).clamp(min=0)
        h = torch.gather(out, 1, last[:, None, None].expand(b, 1, out.shape[2]))[:, 0]
        # An empty history has no state: zero it so every candidate scores 0.
        return self.out(h) * (lengths > 0).to(h.dtype)[:, None]

    def user_vector(self, history: torch.Tensor) -> torch.Tensor:
        """(B, D): the vector every candidate's embedding is dotted with (:meth:`score`)."""
        return self.user_state(history)

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores (B, C) of ``candidates`` (B, C) given ``history`` (B, L)."""
        h = self.user_state(history)
        return (self.item_emb(candidates) * h[:, None, :]).sum(-1)

    def full_scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores (B, N+1) of the whole catalogue (column 0 is padding)."""
        return self.user_state(history) @ self.item_emb.weight.T
