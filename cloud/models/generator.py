"""The cloud's extension point: anything that turns histories into candidate lists.

A backend is one new module that implements :class:`CandidateGenerator` and
registers a loader in :mod:`dcrec.cloud.models.backends`; the gRPC server never changes.

Example::

    gen = load_generator("runs/demo/cloud")
    [cands] = gen.generate([np.array([12, 7, 99])], count=100)
    cands.items[:10], cands.scores[:10]   # best first
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class CandidateList:
    """One ranked list: ``items`` (N,) int64 ids and ``scores`` (N,) float32, best first."""

    items: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 1:
            raise ValueError(
                f"items {self.items.shape} and scores {self.scores.shape} must be equal 1-d shapes"
            )


@runtime_checkable
class CandidateGenerator(Protocol):
    """Produces candidate lists for a batch of users.

    ``n_items``: valid item ids are ``1..n_items``. ``version``: a string that
    changes whenever the model's outputs can change (sent to devices).
    """

    name: str
    version: str
    n_items: int

    def generate(
        self, histories: Sequence[np.ndarray], count: int, exclude_seen: bool = True
    ) -> list[CandidateList]:
        """Rank the catalogue for each history (B arrays of item ids, oldest first).

        Returns B lists of at most ``count`` distinct items, scores descending.
        With ``exclude_seen`` items already in the history are left out.
        """
        ...


def catalogue_scores(gen: CandidateGenerator, histories: Sequence[np.ndarray]) -> np.ndarray:
    """(B, N+1) float64 scores of every item for each history; column 0 and unlisted items -inf.

    Uses the backend's own full-catalogue scorer (``score_batch`` or ``score``) when it has
    one; otherwise asks for a list as long as the catalogue.
    """
    if hasattr(gen, "score_batch"):
        return np.asarray(gen.score_batch(histories), dtype=np.float64)
    if hasattr(gen, "score"):
        return np.asarray(gen.score(histories), dtype=np.float64)
    out = np.full((len(histories), gen.n_items + 1), -np.inf)
    for row, c in enumerate(gen.generate(histories, gen.n_items, exclude_seen=False)):
        out[row, c.items] = c.scores
    return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores`` (B, M): (B, k) ids and (B, k) values.

    Ordered by score descending, ties by smaller id: a total order, so the
    top ``k`` is always a prefix of the top ``k + 1`` and a row's answer never
    depends on the other rows or on ``k`` (what lets a batching server cut one
    long list into each request's count).
    """
    b, m = scores.shape
    k = min(k, m)
    cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, cols, axis=1).min(axis=1)[:, None]  # k-th best value
    above = (scores > kth).sum(axis=1)
    straddle = np.flatnonzero(above + (scores == kth).sum(axis=1) > k)
    if straddle.size:  # ties at the cut: keep the smallest tied ids, whatever argpartition chose
        s = scores[straddle]
        tied = s == kth[straddle]
        take = (s > kth[straddle]) | (tied & (np.cumsum(tied, axis=1) <= (k - above[straddle])[:, None]))
        cols[straddle] = np.nonzero(take)[1].reshape(straddle.size, k)
    vals = np.take_along_axis(scores, cols, axis=1)
    order = np.lexsort((cols, -vals), axis=1)  # score descending, then id ascending
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)


def checked_histories(histories: Sequence[np.ndarray], n_items: int) -> list[np.ndarray]:
    """The histories as int64 arrays; an id outside ``1..n_items`` is a ValueError."""
    out = [np.asarray(h, dtype=np.int64) for h in histories]
    for h in out:
        if h.size and (h.min() < 1 or h.max() > n_items):
            raise ValueError(f"history has item ids outside 1..{n_items}")
    return out
