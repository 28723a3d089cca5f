"""TextRec: a causal transformer over item histories whose items are text + id.

Each item's vector is the sum of a learned id embedding and a learned
projection of its frozen sentence embedding (MiniLM over title, categories,
brand). Items never seen in training have their id embedding masked to zero,
so they are represented, and recommendable, by their text alone. The same item
table embeds the history and scores the catalogue (tied weights): a user is
the encoder's output at the newest position, an item's score is a dot product.

Shapes: ``seq`` (B, L) item ids, left-padded with 0 (oldest first, newest in
the last column); ``item_table()`` (N+1, D) with row 0 the padding item;
``forward`` -> (B, L, D) hidden states, position t summarising ``seq[:, :t+1]``.

Example::

    cfg = TextRecConfig(n_items=100)
    model = TextRecModel(cfg, text_emb=np.random.randn(101, 384).astype("f4"),
                         warm=np.ones(101, bool))
    scores = model.score_last(torch.tensor([[0, 0, 5, 9]]))   # (1, 101)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TextRecConfig:
    n_items: int  # valid ids are 1..n_items; 0 is padding
    text_dim: int = 384  # width of the frozen sentence embeddings
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 50  # history positions the encoder sees; older items are dropped
    ffn_mult: int = 1  # SASRec's narrow feed-forward: a wider one overfits sparse Beauty data
    dropout: float = 0.2  # on embeddings and inside blocks
    use_text: bool = True  # False gives the id-only ablation (SASRec with CE loss)
    use_id: bool = True  # False gives a text-only model (every item is cold)
    id_init_from_text: float = 0.0  # if > 0, id vectors start as the text's principal components at this std (else random)
    id_dropout: float = 0.1  # share of items whose id vector is hidden per training step, so the text part learns to rank alone (cold start)
    table_dropout: float = 0.0  # dropout on the item table itself while training (input and output side)

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if not (self.use_text or self.use_id):
            raise ValueError("at least one of use_text and use_id must be true")
        for name in ("dropout", "id_dropout", "table_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.id_init_from_text < 0:
            raise ValueError(f"id_init_from_text must be >= 0, got {self.id_init_from_text}")
        if self.max_len < 1 or self.n_layers < 0 or self.ffn_mult < 1:
            raise ValueError("max_len, ffn_mult must be >= 1 and n_layers >= 0")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TextRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, D), ``allowed`` (B, 1, L, L) bool -> (B, L, D)."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    """Pre-norm transformer block (attention, then a feed-forward layer)."""

    def __init__(self, cfg: TextRecConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.drop(self.ffn(self.ln2(x)))


class TextRecModel(nn.Module):
    """Item table (id + projected text) and a causal transformer user encoder.

    ``text_emb`` (N+1, text_dim) frozen sentence embeddings (row 0 unused),
    ``warm`` (N+1,) bool: items that occur in training; only these use an id
    embedding.
    """

    def __init__(self, cfg: TextRecConfig, text_emb: np.ndarray | None, warm: np.ndarray):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_items + 1
        if warm.shape != (n,):
            raise ValueError(f"warm mask has shape {warm.shape}, expected ({n},)")
        warm_t = torch.as_tensor(warm, dtype=torch.bool).clone()
        warm_t[0] = False
        self.register_buffer("warm", warm_t)
        if cfg.use_text:
            if text_emb is None or text_emb.shape != (n, cfg.text_dim):
                got = None if text_emb is None else text_emb.shape
                raise ValueError(f"text_emb must have shape ({n}, {cfg.text_dim}), got {got}")
            t = torch.as_tensor(text_emb, dtype=torch.float32)
            # Centred and scaled per dimension: sentence vectors share a large
            # common component that would otherwise dominate the projection.
            mu, sd = t[1:].mean(0), t[1:].std(0).clamp(min=1e-6)
            t = (t - mu) / sd
            t[0] = 0.0
            # Not persistent: the loader passes the embeddings in again, which
            # keeps checkpoints small.
            self.register_buffer("text", t, persistent=False)
            self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        if cfg.use_id:
            self.id_emb = nn.Embedding(n, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.apply(self._init)
        if cfg.use_id and cfg.use_text and cfg.id_init_from_text > 0:
            self._init_ids_from_text(cfg.id_init_from_text)

    @torch.no_grad()
    def _init_ids_from_text(self, std: float) -> None:
        """Start each id vector at its text's top principal components.

        Items with similar text then start close together, which the id
        vectors keep and refine; random vectors must learn it from sparse data.
        """
        t = self.text[1:]
        _, _, v = torch.linalg.svd(t - t.mean(0), full_matrices=False)  # v: (384, 384)
        k = min(self.cfg.dim, v.shape[0])  # a tiny catalogue has fewer components than D
        pcs = (t - t.mean(0)) @ v[:k].T  # (N, k)
        self.id_emb.weight[1:, :k] = pcs * (std / pcs.std().clamp(min=1e-8))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def item_table(self, id_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(N+1, D) item vectors; ``id_keep`` (N+1,) bool further hides id vectors."""
        n = self.cfg.n_items + 1
        table = torch.zeros(n, self.cfg.dim, device=self.warm.device)
        if self.cfg.use_id:
            keep = self.warm if id_keep is None else self.warm & id_keep
            table = table + self.id_emb.weight * keep.unsqueeze(1).to(table.dtype)
        if self.cfg.use_text:
            table = table + self.text_proj(self.text)
        if self.training and self.cfg.table_dropout > 0:
            table = F.dropout(table, self.cfg.table_dropout)
        return table

    def forward(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``seq`` (B, L) left-padded ids, ``table`` (N+1, D) -> (B, L, D)."""
        b, length = seq.shape
        if length > self.cfg.max_len:
            seq, length = seq[:, -self.cfg.max_len :], self.cfg.max_len
        valid = seq > 0  # (B, L)
        # Right-aligned positions: the newest item always has the last position,
        # whatever width the batch was padded to.
        pos = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=seq.device)
        x = table[seq] * math.sqrt(self.cfg.dim) + self.pos_emb(pos)
        x = self.emb_drop(x) * valid.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        # A query may see earlier real items and always itself (so a padded
        # query never has an empty row, which would give NaN).
        allowed = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool,
                                                           device=seq.device)
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    @torch.no_grad()
    def score_last(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """``seq`` (B, L) left-padded ids -> (B, N+1) scores of every item (column 0 = -inf)."""
        table = self.item_table() if table is None else table
        h = self.forward(seq, table)[:, -1]  # (B, D): the newest position
        scores = h @ table.T
        scores[:, 0] = -torch.inf
        return scores
