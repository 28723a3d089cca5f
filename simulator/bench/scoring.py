"""Batched scoring helpers for the offline harness (torch models, cloud generators), and the
reuse-aware training of the models it scores.

Shapes: histories are lists of (n,) arrays; candidate lists are (M, C) int64
padded with 0 and scores (M, C) float32 padded with -inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dcrec.cloud.models import backends
from dcrec.cloud.models.generator import CandidateGenerator


def cloud_lists(gen: CandidateGenerator, histories: Sequence[np.ndarray], count: int,
                exclude: Sequence[np.ndarray] | None = None, batch: int = 512,
                sent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M, C) items and scores of the cloud's lists for ``histories``.

    ``exclude``: per-user items to drop after generation (what the device has
    seen since the cloud's view), as the runtime does before showing a list.
    ``sent``: an (M, C) array filled with the lists as generated, before that drop.
    """
    m = len(histories)
    items = np.zeros((m, count), dtype=np.int64)
    scores = np.full((m, count), -np.inf, dtype=np.float32)
    if sent is not None:
        sent[:] = 0
    for lo in range(0, m, batch):
        hi = min(m, lo + batch)
        extra = max((len(exclude[j]) for j in range(lo, hi)), default=0) if exclude else 0
        lists = gen.generate(list(histories[lo:hi]), count + min(extra, 50), exclude_seen=True)
        for j, c in zip(range(lo, hi), lists, strict=True):
            it, sc = c.items, c.scores
            if sent is not None:
                sent[j, : min(count, it.size)] = it[:count]
            if exclude is not None and len(exclude[j]):
                keep = ~np.isin(it, exclude[j])
                it, sc = it[keep], sc[keep]
            it, sc = it[:count], sc[:count]
            items[j, : it.size] = it
            scores[j, : sc.size] = sc
    return items, scores


def srm_candidate_scores(model, histories: Sequence[np.ndarray], items: np.ndarray,  # type: ignore[no-untyped-def]
                         batch: int = 512) -> np.ndarray:
    """(M, C) device-model scores of candidate lists ``items`` (0 = padding -> -inf)."""
    import torch

    from dcrec.shared.data import pad_left

    out = np.empty(items.shape, dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(histories), batch):
            hi = min(len(histories), lo + batch)
            h = torch.from_numpy(pad_left(histories[lo:hi], model.cfg.max_len))
            out[lo:hi] = model.score(h, torch.from_numpy(items[lo:hi])).numpy()
    out[items == 0] = -np.inf
    return out


def srm_full_scores(model, histories: Sequence[np.ndarray], batch: int = 256):  # type: ignore[no-untyped-def]
    """Yield (lo, hi, (B, N+1) scores) over the full catalogue, seen items not masked."""
    import torch

    from dcrec.shared.data import pad_left

    model.eval()
    with torch.no_grad():
        for lo in range(0, len(histories), batch):
            hi = min(len(histories), lo + batch)
            h = torch.from_numpy(pad_left(histories[lo:hi], model.cfg.max_len))
            hidden = model.encode(h)[:, -1]
            yield lo, hi, (hidden @ model.item_emb.weight.T).numpy()


def seen_mask(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(M, N+1) bool: True where the item is in the user's history."""
    mask = np.zeros((len(histories), n_items + 1), dtype=bool)
    for j, h in enumerate(histories):
        mask[j, h] = True
    return mask


# One home for the reuse-aware trainer: the cloud's registry of backends.
CLOUD_MARKER = backends.REUSE_MARKER
trained_backend = backends.trained_backend
