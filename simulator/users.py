"""Closed-loop simulated users: latent interests that drift and respond to the shown list.

The vocabulary follows RecSim: a user has a *state*, gives a *response* to a
slate (the list the device shows), and moves to a *next state*; a
:class:`UserModel` holds those three steps and scenarios wire a model to a
fleet. One concrete model ships here, :class:`LatentInterestUsers`:

* items and users live in one latent space of ``dim`` dimensions; item
  vectors come from a truncated SVD of the interaction data the cloud trained
  on, so simulated tastes have the structure of the real ones;
* a user starts from a real user's history (the mean of its items' vectors,
  plus noise) and *examines* the slate top-down (cascade model: position p is
  reached with probability ``examine ** p``), clicking an examined item with
  probability ``sigmoid(click_scale * relevance + click_bias)``;
* without a click the user finds something elsewhere (organic choice: a
  softmax over unseen items outside the slate), which is still an event the
  device records;
* consuming an item pulls interest towards it; interest also drifts as a
  random walk; a click makes the session more likely to go on, so a better
  policy earns more events, not only more hits.

Example::

    model = LatentInterestUsers(item_vectors(split.cloud_sequences(), ds.n_items), popularity)
    state = model.initial_state(history, rng)
    resp = model.response(state, slate, rng)   # Response(item=.., position=2 or -1)
    state = model.next_state(state, resp, dt_s=30.0, rng=rng)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

S = TypeVar("S")


@dataclass(frozen=True)
class Response:
    """What a user did with a slate: consumed ``item``; ``position`` in the slate, -1 if found elsewhere."""

    item: int
    position: int

    @property
    def clicked(self) -> bool:
        return self.position >= 0


class UserModel(Protocol[S]):
    """A population of simulated users; state is per user, the model is shared."""

    def initial_state(self, history: np.ndarray, rng: np.random.Generator) -> S:
        """State of a user whose past is ``history`` (L,) item ids, oldest first."""
        ...

    def response(self, state: S, slate: np.ndarray, rng: np.random.Generator) -> Response:
        """The user's reaction to ``slate`` (k,) item ids, best first."""
        ...

    def next_state(self, state: S, response: Response, dt_s: float, rng: np.random.Generator) -> S:
        """State ``dt_s`` simulated seconds after ``response``."""
        ...

    def next_gap_s(self, state: S, response: Response, rng: np.random.Generator) -> float:
        """Simulated seconds until the user's next event."""
        ...


@dataclass(frozen=True)
class LatentUserConfig:
    dim: int = 32  # latent dimensions of interests and items
    init_noise: float = 0.3  # spread of users made from the same real user (relative to |interest|)
    click_scale: float = 6.0  # how sharply relevance (cosine) drives a click
    click_bias: float = -5.5  # click logit at zero relevance: a top-10 item (cos ~0.7) is clicked ~1 in 4
    examine: float = 0.85  # cascade: probability of looking one position further down
    organic_scale: float = 8.0  # softmax sharpness of choices made outside the slate
    popularity_weight: float = 0.5  # how much popular items attract organic choices
    learn_rate: float = 0.15  # how far consuming an item pulls interest towards it
    drift_per_hour: float = 0.1  # random-walk std of interest per sqrt(simulated hour)
    event_gap_s: float = 30.0  # mean gap between events inside a session
    session_gap_s: float = 1800.0  # mean gap between sessions
    continue_p: float = 0.75  # a session goes on after an organic choice...
    continue_click_p: float = 0.9  # ...and more likely after a click: engagement is measurable

    def validate(self) -> None:
        if self.dim < 2:
            raise ValueError(f"users.dim must be >= 2, got {self.dim}")
        for name in ("examine", "continue_p", "continue_click_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"users.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.event_gap_s <= 0 or self.session_gap_s <= 0:
            raise ValueError("users.event_gap_s and users.session_gap_s must be > 0")


@dataclass
class LatentState:
    interest: np.ndarray  # (dim,) unit vector
    consumed: set[int]


def item_vectors(sequences: list[np.ndarray], n_items: int, dim: int = 32, seed: int = 0,
                 power_iters: int = 3) -> np.ndarray:
    """(n_items + 1, dim) unit item vectors from a randomized truncated SVD of the user-item matrix.

    Row 0 (padding) and items nobody interacted with are zero vectors. No
    dependency beyond numpy: the sparse products use index arithmetic.
    """
    rows = np.concatenate([np.full(len(s), u, dtype=np.int64) for u, s in enumerate(sequences)])
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    n_users = len(sequences)
    # Binary interactions, each user's row scaled to unit norm so heavy users do not dominate.
    counts = np.bincount(rows, minlength=n_users).astype(np.float64)
    vals = 1.0 / np.sqrt(np.maximum(counts[rows], 1.0))

    def grouped(keys: np.ndarray, n: int) -> Callable[[np.ndarray], np.ndarray]:
        """out[g] = sum of rows of ``x`` whose key is g: a sparse product by sorted segments."""
        order = np.argsort(keys, kind="stable")
        groups, starts = np.unique(keys[order], return_index=True)

        def apply(x: np.ndarray) -> np.ndarray:
            out = np.zeros((n, x.shape[1]))
            out[groups] = np.add.reduceat(x[order], starts, axis=0)
            return out
        return apply

    by_user, by_item = grouped(rows, n_users), grouped(cols, n_items + 1)

    def xv(m: np.ndarray) -> np.ndarray:  # X (U, I) @ m (I, k)
        return by_user(vals[:, None] * m[cols])

    def xtv(m: np.ndarray) -> np.ndarray:  # X.T (I, U) @ m (U, k)
        return by_item(vals[:, None] * m[rows])

    k = min(dim + 8, n_users, n_items)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(xv(rng.standard_normal((n_items + 1, k))))
    for _ in range(power_iters):
        q, _ = np.linalg.qr(xv(xtv(q)))
    b = xtv(q).T  # (k, I): X ~ q @ b
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    v = (vt[:dim].T * np.sqrt(s[:dim]))  # (I, dim)
    if v.shape[1] < dim:
        v = np.pad(v, ((0, 0), (0, dim - v.shape[1])))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(norms > 1e-12, v / np.maximum(norms, 1e-12), 0.0)
    v[0] = 0.0
    return v.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(x))
    return x / n if n > 1e-12 else x


class LatentInterestUsers:
    """The latent-interest model described in the module docstring."""

    def __init__(self, vectors: np.ndarray, popularity: np.ndarray,
                 config: LatentUserConfig | None = None) -> None:
        """``vectors`` (I+1, dim) unit item vectors; ``popularity`` (I+1,) interaction counts."""
        self.config = config or LatentUserConfig()
        self.config.validate()
        if vectors.shape[0] != popularity.shape[0]:
            raise ValueError(f"{vectors.shape[0]} item vectors but {popularity.shape[0]} popularities")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        logpop = np.log1p(popularity.astype(np.float64))
        self.pop_logit = (self.config.popularity_weight * logpop / max(logpop.max(), 1e-12)
                          ).astype(np.float32)
        self.valid = np.linalg.norm(self.vectors, axis=1) > 0  # items a user can find at all
        self.valid[0] = False

    def initial_state(self, history: np.ndarray, rng: np.random.Generator) -> LatentState:
        cfg = self.config
        base = self.vectors[np.asarray(history, dtype=np.int64)].mean(axis=0) if len(history) else \
            rng.standard_normal(self.vectors.shape[1]).astype(np.float32)
        base = _unit(base)
        noise = rng.standard_normal(base.shape).astype(np.float32) * cfg.init_noise / math.sqrt(base.size)
        return LatentState(_unit(base + noise).astype(np.float32), {int(i) for i in history})

    def response(self, state: LatentState, slate: np.ndarray, rng: np.random.Generator) -> Response:
        cfg = self.config
        slate = np.asarray(slate, dtype=np.int64)
        if slate.size:
            rel = self.vectors[slate] @ state.interest  # (k,) cosine relevance
            p_click = 1.0 / (1.0 + np.exp(-(cfg.click_scale * rel + cfg.click_bias)))
            examined = cfg.examine ** np.arange(slate.size)
            u = rng.random((2, slate.size))
            hit = np.flatnonzero((u[0] < examined) & (u[1] < p_click))
            # Cascade: the user stops at the first examined item that attracts a click.
            if hit.size and int(slate[hit[0]]) not in state.consumed:
                return Response(int(slate[hit[0]]), int(hit[0]))
        logits = cfg.organic_scale * (self.vectors @ state.interest) + self.pop_logit
        logits = logits + rng.gumbel(size=logits.shape).astype(np.float32)  # Gumbel-max sampling
        mask = ~self.valid.copy()
        if state.consumed:
            mask[np.fromiter(state.consumed, dtype=np.int64)] = True
        if slate.size:
            mask[slate] = True  # the user passed those over
        logits[mask] = -np.inf
        item = int(np.argmax(logits))
        if not np.isfinite(logits[item]):  # consumed everything: allow repeats
            item = int(rng.choice(np.flatnonzero(self.valid)))
        return Response(item, -1)

    def next_state(self, state: LatentState, response: Response, dt_s: float,
                   rng: np.random.Generator) -> LatentState:
        cfg = self.config
        v = self.vectors[response.item]
        interest = state.interest + cfg.learn_rate * (v - state.interest)
        step = cfg.drift_per_hour * math.sqrt(max(dt_s, 0.0) / 3600.0)
        if step:
            interest = interest + rng.standard_normal(interest.shape).astype(np.float32) * (
                step / math.sqrt(interest.size))
        state.interest = _unit(interest).astype(np.float32)
        state.consumed.add(response.item)
        return state

    def next_gap_s(self, state: LatentState, response: Response, rng: np.random.Generator) -> float:
        cfg = self.config
        p = cfg.continue_click_p if response.clicked else cfg.continue_p
        mean = cfg.event_gap_s if rng.random() < p else cfg.session_gap_s
        return float(rng.exponential(mean))
