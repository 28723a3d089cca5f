"""What a fresh list from the cloud is worth now: the device's features and the request-value model.

The device asks the cloud for a new list when the list it holds has gone stale. Which
events those are is learned in the cloud (:mod:`dcrec.cloud.training.request_value`): it
replays the device's situation for users whose next item it never trained on, labels each
with what a fresh list gained on that item (NDCG@10 of the fused fresh list minus the fused
stale one), and fits a small model of that gain on features the device has at that moment.
The model travels inside the signed release (the release config's ``request_model``); the
runtime's ``learned`` policy (:class:`dcrec.device.policy.LearnedPolicy`) scores every event
with it and spends its budget on the events with the highest predicted gain.

One function computes the features, :func:`situation_features`, and both the offline harness
and :class:`~dcrec.device.runtime.DeviceRuntime` call it, so the model sees on the phone what
it was trained on. Everything here is numpy: the model is a one-hidden-layer network whose
forward pass is two small matrix products (a few microseconds).

Example::

    x = situation_features(open_scores, shown, live_items, live_cloud, live_device,
                           list_items, since, history_len, local_items)
    model = RequestValueModel.from_dict(release_config["request_model"])
    value = model.predict(x[None, :])[0]      # expected NDCG@10 gained by asking now
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcrec.shared.agreement import rank_biased_overlap, regret_of_scores

#: The features, in the order :func:`situation_features` returns them.
FEATURES: tuple[str, ...] = (
    "regret",            # expected DCG@show the shown list loses against the device's own best list
    "uncovered",         # device probability that the next item is outside the cached list
    "rbo",               # 1 - RBO of the cloud's and the device's orders of the cached list
    "entropy",           # device distribution's entropy over the catalogue / log(open items)
    "top1",              # device probability of its favourite item
    "top10",             # device probability mass of its ten favourites
    "history",           # log(1 + events the device holds)
    "since_hits",        # share of the events since the list that the list had offered
    "since_list",        # log(1 + events since the list was made)
    "local_overlap",     # share of the neighbour index's local top that the cached list holds
    "device_top_listed", # share of the device's top ten (whole catalogue) the cached list holds
)
FORMAT_VERSION = 1


class RequestModelError(ValueError):
    """A request-value model that cannot be used: wrong format, features or shapes."""


def situation_features(open_scores: np.ndarray, shown: np.ndarray, live_items: np.ndarray,
                       live_cloud: np.ndarray, live_device: np.ndarray, list_items: np.ndarray,
                       since: np.ndarray, history_len: int, local_items: np.ndarray | None,
                       temperature: float = 2.0, show: int = 10, top: int = 20) -> np.ndarray:
    """(len(FEATURES),) float64 features of one device situation.

    ``open_scores`` (N+1,) the device model's scores of every item id, padding and consumed
    items at ``-inf``; ``shown`` the fused list on screen, best first; ``live_items`` the
    cached list's unconsumed items with their cloud scores ``live_cloud`` and device scores
    ``live_device``; ``list_items`` the cached list as the cloud sent it; ``since`` the items
    consumed since that list was made; ``local_items`` the neighbour index's local list for
    the history now, best first (None without an index).
    """
    s = np.asarray(open_scores, dtype=np.float64)
    z = s / temperature
    finite = np.isfinite(z)
    n_open = int(finite.sum())
    live = np.asarray(live_items, dtype=np.int64)
    if n_open == 0:
        return np.zeros(len(FEATURES))
    m = z[finite].max()
    e = np.where(finite, np.exp(np.where(finite, z - m, 0.0)), 0.0)
    p = e / e.sum()
    k10 = min(10, n_open)
    top_ids = np.argpartition(-s, k10 - 1)[:k10]
    top_p = np.sort(p[top_ids])[::-1]
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(n_open)) if n_open > 1 else 0.0
    listed = live[(live > 0) & (live < p.size)]
    uncovered = float(np.clip(1.0 - p[np.unique(listed)].sum(), 0.0, 1.0))
    if live.size > 1:
        c_order = live[np.argsort(-np.asarray(live_cloud, dtype=np.float64), kind="stable")]
        d_order = live[np.argsort(-np.asarray(live_device, dtype=np.float64), kind="stable")]
        rbo = 1.0 - rank_biased_overlap(c_order, d_order, depth=top)
    else:
        rbo = 0.0
    since = np.asarray(since, dtype=np.int64)
    sent = np.asarray(list_items, dtype=np.int64)
    since_hits = float(_member(since, sent).mean()) if since.size else 1.0
    if local_items is not None and np.asarray(local_items).size:
        loc = np.asarray(local_items, dtype=np.int64)[:top]
        local_overlap = float(_member(loc, live).mean())
    else:
        local_overlap = 0.0
    return np.array([
        regret_of_scores(s, temperature, np.asarray(shown, dtype=np.int64), show, top_ids),
        uncovered,
        rbo,
        entropy,
        float(top_p[0]),
        float(top_p.sum()),
        math.log1p(history_len),
        since_hits,
        math.log1p(since.size),
        local_overlap,
        float(_member(top_ids, live).mean()),
    ])


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.isin(a, b)`` for item ids (ints >= 0), through a mask over the ids: the same
    booleans, without isin's sorting (it is on the device's event path)."""
    if a.size == 0 or b.size == 0:
        return np.zeros(a.shape, dtype=bool)
    if min(int(a.min()), int(b.min())) < 0:
        return np.isin(a, b)
    mask = np.zeros(max(int(a.max()), int(b.max())) + 1, dtype=bool)
    mask[b] = True
    return mask[a]


@dataclass(frozen=True)
class RequestValueModel:
    """Standardised features ``z`` -> ``z @ w0 + tanh(z @ w1 + b1) @ w2 + b2``: the predicted
    NDCG@10 gain of a fresh list (a linear term beside one tanh layer; either may be zero)."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    w1: np.ndarray  # (F, H)
    b1: np.ndarray  # (H,)
    w2: np.ndarray  # (H,)
    b2: float
    w0: np.ndarray | None = None  # (F,) the linear term; None: none
    temperature: float = 2.0  # the device distribution's softmax temperature in the features
    show: int = 10
    top: int = 20
    features: tuple[str, ...] = FEATURES

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(M,) predicted gain for features ``x`` (M, F)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        out = np.tanh(z @ self.w1 + self.b1) @ self.w2 + self.b2
        return out + z @ self.w0 if self.w0 is not None else out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (it rides in the release config, covered by its manifest)."""
        return {"format": FORMAT_VERSION, "features": list(self.features),
                "temperature": self.temperature, "show": self.show, "top": self.top,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "w1": self.w1.tolist(),
                "b1": self.b1.tolist(), "w2": self.w2.tolist(), "b2": float(self.b2),
                "w0": None if self.w0 is None else self.w0.tolist()}

    @classmethod
    def from_dict(cls, d: Any) -> RequestValueModel:
        """The model from :meth:`to_dict`'s form; RequestModelError naming what is wrong."""
        if not isinstance(d, dict):
            raise RequestModelError(f"request model: expected an object, got {type(d).__name__}")
        if d.get("format") != FORMAT_VERSION:
            raise RequestModelError(f"request model: format {d.get('format')!r}, this device reads "
                                    f"{FORMAT_VERSION}")
        if tuple(d.get("features", ())) != FEATURES:
            raise RequestModelError(f"request model: features {d.get('features')!r} differ from "
                                    f"this device's {list(FEATURES)}")
        try:
            mean, std = np.asarray(d["mean"], float), np.asarray(d["std"], float)
            w1, b1 = np.asarray(d["w1"], float), np.asarray(d["b1"], float)
            w2, b2 = np.asarray(d["w2"], float), float(d["b2"])
            w0 = None if d.get("w0") is None else np.asarray(d["w0"], float)
            temperature, show, top = float(d["temperature"]), int(d["show"]), int(d["top"])
        except (KeyError, TypeError, ValueError) as e:
            raise RequestModelError(f"request model: missing or malformed field ({e})") from e
        f = len(FEATURES)
        if (mean.shape != (f,) or std.shape != (f,) or w1.ndim != 2 or w1.shape[0] != f
                or b1.shape != (w1.shape[1],) or w2.shape != (w1.shape[1],)
                or (w0 is not None and w0.shape != (f,))):
            raise RequestModelError(f"request model: shapes mean {mean.shape}, std {std.shape}, "
                                    f"w1 {w1.shape}, b1 {b1.shape}, w2 {w2.shape} do not fit "
                                    f"{f} features")
        arrays = (mean, std, w1, b1, w2, np.array([b2, temperature]),
                  w0 if w0 is not None else np.zeros(0))
        if not all(np.isfinite(a).all() for a in arrays) or (std <= 0).any() or temperature <= 0:
            raise RequestModelError("request model: non-finite weights, a std <= 0 or a "
                                    "temperature <= 0")
        if show < 1 or top < 1:
            raise RequestModelError(f"request model: show and top must be >= 1, got {show}, {top}")
        return cls(mean, std, w1, b1, w2, b2, w0, temperature, show, top)
