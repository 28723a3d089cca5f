"""On-device adaptation: a per-user vector learned online from the device's own events, in numpy.

The shipped reranker is the same for everyone; its item embeddings (an extra
output of the ONNX graph, ``candidate_embeddings`` (B, C, D)) give every
candidate a vector. The device keeps one small user vector ``u`` (D,) and
adds ``u . e_c`` to each candidate's score. When the user picks item ``t``
out of the scored list, ``u`` takes one gradient step on the log-likelihood
of that choice under a softmax over the list (the same listwise loss the
reranker was trained with), and decays a little towards zero, so it follows
recent taste and forgets old taste:

    p = softmax(scores + E u);   u <- (1 - decay) u + lr * (e_t - p^T E)

No backpropagation through the model, no torch: one (C, D) matrix-vector
product per event.

Example::

    adapter = UserAdapter(dim=64)
    scores = adapter.adjust(device_scores, embeddings)   # (C,)
    adapter.update(device_scores, embeddings, chosen_embedding)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class UserAdapter:
    dim: int
    lr: float = 0.5  # step size on the listwise log-likelihood
    decay: float = 0.05  # per update: how fast old taste fades
    max_norm: float = 5.0  # keeps one odd event from dominating the scores
    u: np.ndarray = field(init=False)
    updates: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.lr <= 0 or not 0.0 <= self.decay < 1.0:
            raise ValueError("dim >= 1, lr > 0 and decay in [0, 1) required")
        self.u = np.zeros(self.dim, dtype=np.float64)

    def adjust(self, scores: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """(C,) scores plus ``embeddings`` (C, D) @ u."""
        return (np.asarray(scores, dtype=np.float64) + embeddings @ self.u).astype(np.float32)

    def update(self, scores: np.ndarray, embeddings: np.ndarray, chosen: np.ndarray) -> None:
        """The user picked the item whose embedding is ``chosen`` (D,) from the list scored ``scores`` (C,)."""
        if embeddings.shape[0] == 0:
            return
        logits = self.adjust(scores, embeddings).astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        grad = np.asarray(chosen, dtype=np.float64) - p @ embeddings
        self.u = (1.0 - self.decay) * self.u + self.lr * grad
        norm = float(np.linalg.norm(self.u))
        if norm > self.max_norm:
            self.u *= self.max_norm / norm
        self.updates += 1

    def state(self) -> dict[str, object]:
        return {"u": self.u.tolist(), "updates": self.updates}

    def load_state(self, state: dict[str, object]) -> None:
        u = np.asarray(state.get("u", []), dtype=np.float64)
        if u.shape == (self.dim,):  # a new model with another width: start over
            self.u = u
            self.updates = int(state.get("updates", 0))  # type: ignore[call-overload]
