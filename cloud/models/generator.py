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
