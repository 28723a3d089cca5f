"""Item-to-item co-occurrence recommender: the simple, fast cloud backend.

Counts how often item ``j`` follows item ``i`` within a short window of the
same user's sequence, normalises by both items' popularity (cosine-style), and
keeps each item's top-K neighbours. A user's candidates are the neighbours of
their recent items, weighted by recency, with popularity as a small prior so
every user gets a full list.

Example::

    train(ds, split.train, Path("runs/cloud"), {"window": 5})
    gen = load_generator(Path("runs/cloud"))
    [cands] = gen.generate([history], count=100)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.models.backends import write_manifest
from dcrec.cloud.models.generator import CandidateList, top_k
from dcrec.shared.data import Dataset

log = logging.getLogger(__name__)

BACKEND = "cooccurrence"


@dataclass(frozen=True)
class CooccurrenceConfig:
    window: int = 5  # how far ahead in a sequence two items still count as related
    neighbours: int = 200  # kept per item; bounds memory at n_items * neighbours
    recent: int = 10  # how many of the newest history items vote
    decay: float = 0.7  # weight of each older history item relative to the next newer one
    backward_weight: float = 0.3  # "j before i" counts this much of "i before j"
    popularity_prior: float = 1e-3  # tie-breaker so every user gets a full list

    def validate(self) -> None:
        if self.window < 1 or self.neighbours < 1 or self.recent < 1:
            raise ValueError("window, neighbours and recent must be >= 1")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")


class CooccurrenceGenerator:
    """Top-K neighbour lists per item: ``nbr_items`` (N+1, K) int32, ``nbr_weights`` (N+1, K) float32."""

    name = BACKEND

    def __init__(self, nbr_items: np.ndarray, nbr_weights: np.ndarray, popularity: np.ndarray,
                 config: CooccurrenceConfig, version: str) -> None:
        self.nbr_items = nbr_items
        self.nbr_weights = nbr_weights
        self.popularity = popularity.astype(np.float32)
        self.config = config
        self.version = version
        self.n_items = int(popularity.shape[0] - 1)
        pop = self.popularity / max(float(self.popularity.max()), 1.0)
        self._prior = (config.popularity_prior * pop).astype(np.float32)
        self._prior[0] = -np.inf

    def score(self, history: np.ndarray) -> np.ndarray:
        """(N+1,) scores for one history (item ids, oldest first); padding scores -inf."""
        return self.score_batch([history])[0]

    def score_batch(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, N+1) float32 scores for B histories; column 0 (padding) is -inf.

        One scatter over the whole batch (``np.bincount`` on row-offset ids), so
        a batch of 64 costs far less than 64 single calls. Each row's result
        depends on its own history only: the sums run in float64 in a fixed
        order, so a history scores identically alone or in any batch.
        """
        cfg = self.config
        n1 = self.n_items + 1
        b = len(histories)
        recent = np.zeros((b, cfg.recent), dtype=np.int64)  # 0 = no item (its neighbours weigh 0)
        weight = np.zeros((b, cfg.recent), dtype=np.float32)
        for row, h in enumerate(histories):
            r = np.asarray(h, dtype=np.int64)[-cfg.recent:][::-1]
            r = r[(r > 0) & (r <= self.n_items)]
            recent[row, : r.size] = r
            weight[row, : r.size] = cfg.decay ** np.arange(r.size, dtype=np.float32)
        cells = (np.arange(b, dtype=np.int64)[:, None, None] * n1 + self.nbr_items[recent]).ravel()
        votes = (self.nbr_weights[recent] * weight[:, :, None]).ravel()
        sums = np.bincount(cells, weights=votes, minlength=b * n1).reshape(b, n1)
        scores = (sums + self._prior[None, :]).astype(np.float32)
        scores[:, 0] = -np.inf
        return scores

    def generate(self, histories: Sequence[np.ndarray], count: int,
                 exclude_seen: bool = True) -> list[CandidateList]:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if not len(histories):
            return []
        scores = self.score_batch(histories)
        if exclude_seen:
            for row, h in enumerate(histories):
                h = np.asarray(h, dtype=np.int64)
                scores[row, h[(h > 0) & (h <= self.n_items)]] = -np.inf
        items, vals = top_k(scores, min(count, self.n_items))
        out = []
        for it, v in zip(items, vals, strict=True):
            keep = np.isfinite(v)  # padding and excluded items score -inf
            out.append(CandidateList(it[keep].astype(np.int64), v[keep]))
        return out


def fit(train_sequences: Sequence[np.ndarray], n_items: int,
        config: CooccurrenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count windowed co-occurrences; return (nbr_items, nbr_weights, popularity)."""
    config.validate()
    n = n_items + 1
    popularity = np.zeros(n, dtype=np.float64)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    for seq in train_sequences:
        seq = np.asarray(seq, dtype=np.int64)
        np.add.at(popularity, seq, 1.0)
        for gap in range(1, config.window + 1):
            if len(seq) <= gap:
                break
            a, b = seq[:-gap], seq[gap:]
            w = np.full(a.shape, 1.0 / gap)
            src += [a, b]
            dst += [b, a]
            wts += [w, w * config.backward_weight]
    k = min(config.neighbours, n_items)
    nbr_items = np.zeros((n, k), dtype=np.int32)
    nbr_weights = np.zeros((n, k), dtype=np.float32)
    if src:
        s, d, w = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
        keep = s != d
        s, d, w = s[keep], d[keep], w[keep]
        code = s * n + d
        uniq, inv = np.unique(code, return_inverse=True)
        counts = np.bincount(inv, weights=w)
        s, d = uniq // n, uniq % n
        norm = counts / np.sqrt(np.maximum(popularity[s], 1.0) * np.maximum(popularity[d], 1.0))
        order = np.lexsort((-norm, s))  # by source, strongest first
        s, d, norm = s[order], d[order], norm[order]
        starts = np.searchsorted(s, np.arange(n))
        ends = np.searchsorted(s, np.arange(n), side="right")
        for i in np.nonzero(ends > starts)[0]:
            m = min(k, ends[i] - starts[i])
            nbr_items[i, :m] = d[starts[i] : starts[i] + m]
            nbr_weights[i, :m] = norm[starts[i] : starts[i] + m]
    return nbr_items, nbr_weights, popularity


def train(dataset: Dataset, train_sequences: list[np.ndarray], out_dir: Path,
          options: dict[str, Any], resume: bool = False) -> None:
    """Fit on ``train_sequences`` and write the model directory (resume is a no-op: fitting is one pass)."""
    fields = CooccurrenceConfig.__dataclass_fields__
    unknown = set(options) - set(fields)
    if unknown:
        raise ValueError(f"unknown cooccurrence options {sorted(unknown)}; known: {sorted(fields)}")
    config = CooccurrenceConfig(**options)
    nbr_items, nbr_weights, popularity = fit(train_sequences, dataset.n_items, config)
    digest = hashlib.sha256(nbr_items.tobytes() + nbr_weights.tobytes()).hexdigest()[:12]
    np.savez(out_dir / "cooccurrence.npz", nbr_items=nbr_items, nbr_weights=nbr_weights,
             popularity=popularity)
    write_manifest(out_dir, BACKEND, f"{BACKEND}-{digest}", n_items=dataset.n_items,
                   config=asdict(config))
    log.info("cooccurrence model: %d items, %d neighbours each, version %s",
             dataset.n_items, nbr_items.shape[1], digest)


def load_generator(model_dir: Path) -> CooccurrenceGenerator:
    from dcrec.cloud.models.backends import read_manifest

    manifest = read_manifest(model_dir)
    with np.load(model_dir / "cooccurrence.npz") as z:
        return CooccurrenceGenerator(z["nbr_items"], z["nbr_weights"], z["popularity"],
                                     CooccurrenceConfig(**manifest["config"]), manifest["version"])
