"""DIN-style target attention: each candidate looks at the history items that matter to it.

For candidate ``c`` and history item ``h_l`` (plus a recency embedding) a small
MLP over ``[h_l, c, h_l * c]`` gives an attention logit; a softmax over the
history and one "attend to nothing" slot (so an empty history is well
defined) pools the history into a candidate-specific interest vector ``u_c``.
The score is ``u_c . c`` plus an MLP over ``[u_c, c, u_c * c]``.

The first attention layer is split into its three parts so the (B, C, L, D)
product ``h * c`` is never materialised: only (B, C, L, A) with A < D.

Shapes: ``history`` (B, L) item ids, left-padded with 0, newest last;
``candidates`` (B, C); scores (B, C). There is no cheap full-catalogue score
(every candidate attends separately), so DIN trains on candidate lists only.

Example::

    model = DIN(DINConfig(n_items=12101))
    scores = model.score(history, candidates)   # (B, C)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DINConfig:
    n_items: int
    max_len: int = 50  # history positions; longer histories keep the newest
    dim: int = 64
    att_hidden: int = 32  # width of the attention MLP; the (B, C, L, A) tensor dominates memory
    mlp_hidden: int = 64
    dropout: float = 0.2  # on embeddings; small data overfits quickly

    def validate(self) -> None:
        if min(self.n_items, self.max_len, self.dim, self.att_hidden, self.mlp_hidden) < 1:
            raise ValueError("n_items, max_len, dim, att_hidden and mlp_hidden must be >= 1")


class DIN(nn.Module):
    def __init__(self, cfg: DINConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, a = cfg.dim, cfg.att_hidden
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, d)  # position counted from the newest item
        self.drop = nn.Dropout(cfg.dropout)
        self.att_h = nn.Linear(d, a)
        self.att_c = nn.Linear(d, a, bias=False)
        self.att_p = nn.Parameter(torch.randn(a, d) * 0.02)  # weights of the h * c part
        self.att_out = nn.Linear(a, 1)
        self.mlp = nn.Sequential(nn.Linear(3 * d, cfg.mlp_hidden), nn.ReLU(),
                                 nn.Linear(cfg.mlp_hidden, 1))
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores (B, C) of ``candidates`` (B, C) given ``history`` (B, L)."""
        history = history[:, -self.cfg.max_len:]
        b, length = history.shape
        pos = torch.arange(length, device=history.device) + (self.cfg.max_len - length)
        h = self.drop(self.item_emb(history))  # (B, L, D)
        hp = h + self.pos_emb(pos)[None]
        c = self.drop(self.item_emb(candidates))  # (B, C, D)
        n_cand = c.shape[1]
        # sum_d hp[l,d] * c[k,d] * W[a,d] for every (k, l, a), as one batched matmul.
        hw = (hp[:, :, None, :] * self.att_p[None, None]).reshape(b, length * self.att_p.shape[0], -1)
        cross = torch.matmul(hw, c.transpose(1, 2))  # (B, L*A, C)
        cross = cross.reshape(b, length, -1, n_cand).permute(0, 3, 1, 2)  # (B, C, L, A)
        z = torch.relu(cross + self.att_h(hp)[:, None] + self.att_c(c)[:, :, None])
        logits = self.att_out(z)[..., 0]  # (B, C, L)
        logits = logits.masked_fill((history == 0)[:, None, :], -1e9)
        null = torch.zeros_like(logits[..., :1])  # the "nothing relevant" slot
        weights = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :length]
        interest = torch.matmul(weights, h)  # (B, C, D)
        feats = torch.cat([interest, c, interest * c], dim=-1)
        return (interest * c).sum(-1) + self.mlp(feats)[..., 0]
