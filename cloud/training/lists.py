"""Training examples for rerankers: sequence prefixes and the cloud's lists for them.

A prefix is "the user had done ``s[:t]``; the next item is ``s[t]``". For
collaborative training each prefix also gets the cloud's candidate list as the
device would hold it: generated from a *stale* history ``s[:t - lag]`` (the
cloud saw ``lag`` fewer items than the device, as in deployment), with the
items the device has already seen removed. The reranker then learns to order
exactly the kind of list it will be given, against the cloud's own hard
negatives.

Example::

    p = prefixes(train_sequences, max_len=50)
    lists = cloud_lists(generator, train_sequences, p, count=100, lags=(0, 1, 2))   # (P, 100)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.shared.data import pad_left
from dcrec.shared.fileio import replacing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prefixes:
    """P examples: ``seq`` (P,) index into the sequences, ``pos`` (P,) cut, ``targets`` (P,) = s[pos]."""

    seq: np.ndarray
    pos: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.size)

    def take(self, idx: np.ndarray) -> Prefixes:
        return Prefixes(self.seq[idx], self.pos[idx], self.targets[idx])


def prefixes(sequences: Sequence[np.ndarray], min_history: int = 1) -> Prefixes:
    """Every (history, next item) pair with at least ``min_history`` history items."""
    seq, pos = [], []
    for i, s in enumerate(sequences):
        n = len(s)
        if n > min_history:
            t = np.arange(min_history, n)
            seq.append(np.full(t.size, i))
            pos.append(t)
    if not seq:
        raise ValueError("no sequence is long enough to make a training example")
    seq_a, pos_a = np.concatenate(seq).astype(np.int64), np.concatenate(pos).astype(np.int64)
    targets = np.fromiter((sequences[s][t] for s, t in zip(seq_a, pos_a, strict=True)),
                          dtype=np.int64, count=seq_a.size)
    return Prefixes(seq_a, pos_a, targets)


def histories(sequences: Sequence[np.ndarray], p: Prefixes, max_len: int) -> np.ndarray:
    """(P, max_len) the device's histories ``s[:t]``, left-padded."""
    return pad_left([sequences[s][:t] for s, t in zip(p.seq, p.pos, strict=True)], max_len)


def _cache_key(generator: CandidateGenerator, sequences: Sequence[np.ndarray], p: Prefixes,
               count: int, lags: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{generator.name}:{generator.version}:{count}".encode())
    for arr in (p.seq, p.pos, p.targets, lags):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(str(sum(len(s) for s in sequences)).encode())
    return h.hexdigest()[:16]


def cloud_lists(generator: CandidateGenerator, sequences: Sequence[np.ndarray], p: Prefixes,
                count: int, lags: np.ndarray, chunk: int = 1024, cache_dir: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(P, count) int64: the cloud's list for each prefix as the device would hold it, 0-padded.

    ``lags`` (P,) how many of the device's newest items the cloud had not seen.
    Items in the device's history ``s[:t]`` are removed (the device never shows
    them), so the list is what the reranker will face. With ``cache_dir`` the
    result is stored under a key of the generator version and the examples.
    """
    return scored_cloud_lists(generator, sequences, p, count, lags, chunk, cache_dir, progress)[0]


def scored_cloud_lists(generator: CandidateGenerator, sequences: Sequence[np.ndarray], p: Prefixes,
                       count: int, lags: np.ndarray, chunk: int = 1024,
                       cache_dir: str | Path | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`cloud_lists`, with the cloud's scores: (P, count) items and (P, count) float32.

    Padding slots hold item 0 and score -inf.
    """
    lags = np.asarray(lags, dtype=np.int64)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"cloud_lists_{_cache_key(generator, sequences, p, count, lags)}.npz"
        if cache.is_file():
            log.info("cloud lists from cache %s", cache)
            with np.load(cache) as z:
                return z["items"], z["scores"]
    out = np.zeros((len(p), count), dtype=np.int64)
    val = np.full((len(p), count), -np.inf, dtype=np.float32)
    for lo in range(0, len(p), chunk):
        hi = min(lo + chunk, len(p))
        stale = [sequences[s][: max(t - g, 0)] for s, t, g in
                 zip(p.seq[lo:hi], p.pos[lo:hi], lags[lo:hi], strict=True)]
        # Ask for a few extra: up to ``lag`` of them are items the device has since consumed.
        extra = int(lags[lo:hi].max()) if hi > lo else 0
        lists = generator.generate(stale, count + extra, exclude_seen=True)
        for j, cand in enumerate(lists):
            s, t = p.seq[lo + j], p.pos[lo + j]
            seen = sequences[s][max(t - lags[lo + j], 0):t]
            keep = ~np.isin(cand.items, seen) if seen.size else np.ones(cand.items.size, bool)
            items, scores = cand.items[keep][:count], cand.scores[keep][:count]
            out[lo + j, : items.size] = items
            val[lo + j, : items.size] = scores
        if progress:
            progress(hi, len(p))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with replacing(cache) as tmp:
            np.savez(tmp, items=out, scores=val)
    return out, val


def with_target(lists: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists (B, C) that surely hold their target, and the target's column (B,).

    A list that misses its target gets it in its last real slot (or the first
    padding slot), so every example teaches the model something about ordering.
    """
    lists = lists.copy()
    hit = lists == targets[:, None]
    found = hit.any(axis=1)
    col = hit.argmax(axis=1)
    length = (lists > 0).sum(axis=1)
    slot = np.minimum(length, lists.shape[1] - 1)
    rows = np.flatnonzero(~found)
    lists[rows, slot[rows]] = targets[rows]
    col[rows] = slot[rows]
    return lists, col.astype(np.int64)
