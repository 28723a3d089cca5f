"""Fitting the request-value model (:mod:`dcrec.shared.request_value`) in the cloud.

The rows are replayed device situations (:func:`dcrec.shared.request_value.situation_features`)
whose label is what a fresh list gained on the user's next item: NDCG@10 of the fused fresh
list minus that of the fused stale list, from cloud lists made without that item (out of
fold). The gain is zero for most rows and its sign is noisy, so the candidates are small:
ridge regression at a few penalties, and the best of them with one weight-decayed tanh layer
of 16 beside it (trained full-batch, stopped on held-out rows' squared error). The one chosen
is what a budget buys on the held-out rows: the mean gain of the rows it would pick at 5, 10
and 20 % requests.

Example::

    model = fit_request_model(x_valid, gain_valid, seed=0)
    model.predict(x_test)                  # (M,) expected gain of a fresh list
    release_config["request_model"] = model.to_dict()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.shared.request_value import FEATURES, RequestValueModel

#: The request shares a score is judged at on held-out rows.
PICK_RATIOS = (0.05, 0.10, 0.20)
#: Ridge penalties tried for the linear model (on standardised features).
RIDGE_PENALTIES = (1.0, 10.0, 100.0, 1000.0)


def pick_gain(score: np.ndarray, gain: np.ndarray, ratios: tuple[float, ...] = PICK_RATIOS) -> float:
    """Mean over ``ratios`` of the gain per row when the top share of rows by ``score`` gets a
    fresh list (the budget's worth of a score)."""
    order = np.argsort(-score, kind="stable")
    return float(np.mean([gain[order[: max(1, int(round(r * score.size)))]].sum() / score.size
                          for r in ratios]))


def _ridge(z: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """Weights and intercept of ridge regression on standardised ``z`` (intercept unpenalised)."""
    zc, yc = z - z.mean(0), y - y.mean()
    w = np.linalg.solve(zc.T @ zc + penalty * np.eye(z.shape[1]), zc.T @ yc)
    return w, float(y.mean() - z.mean(0) @ w)


def _mlp(z: np.ndarray, y: np.ndarray, hold: np.ndarray, fit: np.ndarray, w0: np.ndarray, b0: float,
         seed: int, hidden: int, weight_decay: float, lr: float, max_steps: int, check_every: int,
         patience: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """A tanh layer beside a linear term started at the ridge solution, trained full-batch on
    ``fit`` rows, stopped by the mean squared error on ``hold`` rows."""
    import torch

    torch.manual_seed(seed)
    zt, yt = torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    lin = torch.nn.Linear(z.shape[1], 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w0[None, :], dtype=torch.float32))
        lin.bias.fill_(b0)
    hid = torch.nn.Linear(z.shape[1], hidden)
    out = torch.nn.Linear(hidden, 1, bias=False)
    with torch.no_grad():
        out.weight.mul_(0.1)
    params = [*lin.parameters(), *hid.parameters(), *out.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    fit_t, hold_t = torch.as_tensor(fit), torch.as_tensor(hold)

    def forward(rows: torch.Tensor) -> torch.Tensor:
        return (lin(zt[rows]) + out(torch.tanh(hid(zt[rows])))).squeeze(1)

    best, best_state, bad = np.inf, None, 0
    for step in range(max_steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(forward(fit_t), yt[fit_t])
        loss.backward()
        opt.step()
        if step % check_every == check_every - 1:
            with torch.no_grad():
                value = float(torch.nn.functional.mse_loss(forward(hold_t), yt[hold_t]))
            if value < best - 1e-12:
                best, bad = value, 0
                best_state = [p.detach().clone() for p in params]
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        with torch.no_grad():
            for p, v in zip(params, best_state, strict=True):
                p.copy_(v)
    f64 = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    return (f64(hid.weight).T, f64(hid.bias), f64(out.weight)[0], float(f64(lin.bias)[0]),
            f64(lin.weight)[0])


def fit_request_model(x: np.ndarray, gain: np.ndarray, seed: int = 0, hidden: int = 16,
                      weight_decay: float = 1e-3, lr: float = 3e-3, max_steps: int = 3000,
                      check_every: int = 25, patience: int = 8, holdout: float = 0.25,
                      temperature: float = 2.0, show: int = 10, top: int = 20) -> RequestValueModel:
    """The model of ``gain`` (M,) from features ``x`` (M, F).

    Candidates: ridge regression at each of :data:`RIDGE_PENALTIES`, and the best of them
    with a tanh layer beside it; the one whose top rows on a held-out share gain most
    (:func:`pick_gain`) is refitted on every row (the network keeps its stopping step's
    weights) and returned.
    """
    x = np.asarray(x, dtype=np.float64)
    gain = np.asarray(gain, dtype=np.float64)
    if x.ndim != 2 or gain.shape != (x.shape[0],):
        raise ValueError(f"features (M, F) and gains (M,) expected, got {x.shape} and {gain.shape}")
    if x.shape[0] < 50:
        raise ValueError(f"need at least 50 replayed situations to fit a request model, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(gain).all()):
        raise ValueError("features and gains must be finite")
    rng = np.random.default_rng([seed, 17])
    idx = rng.permutation(x.shape[0])
    n_hold = max(1, int(round(holdout * x.shape[0])))
    hold, fit = idx[:n_hold], idx[n_hold:]
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    z = (x - mean) / std
    scored: list[tuple[float, str, Any]] = []
    for penalty in RIDGE_PENALTIES:
        w, b = _ridge(z[fit], gain[fit], penalty)
        scored.append((pick_gain(z[hold] @ w + b, gain[hold]), f"ridge{penalty:g}", penalty))
    best_penalty = max(scored, key=lambda t: t[0])[2]
    w, b = _ridge(z[fit], gain[fit], best_penalty)
    net = _mlp(z, gain, hold, fit, w, b, seed, hidden, weight_decay, lr, max_steps, check_every, patience)
    w1, b1, w2, b2, w0 = net
    mlp_pred = np.tanh(z[hold] @ w1 + b1) @ w2 + b2 + z[hold] @ w0
    scored.append((pick_gain(mlp_pred, gain[hold]), "mlp", net))
    _, name, chosen = max(scored, key=lambda t: t[0])
    if name == "mlp":
        w1, b1, w2, b2, w0 = chosen
    else:
        w0, b2 = _ridge(z, gain, chosen)
        w1, b1, w2 = np.zeros((x.shape[1], 1)), np.zeros(1), np.zeros(1)
    return RequestValueModel(mean, std, w1, b1, w2, b2, w0, temperature, show, top)


def _dcg_at(shown: np.ndarray, target: int, k: int = 10) -> float:
    hit = np.flatnonzero(np.asarray(shown)[:k] == target)
    return float(1.0 / np.log2(hit[0] + 2.0)) if hit.size else 0.0


def replay(sequences: list[np.ndarray], users: np.ndarray, gen: Any, reranker: Any,
           neighbours: Any, config: Any, lags: np.ndarray, workdir: Path, count: int = 100,
           temperature: float = 2.0, show: int = 10, top: int = 20,
           progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's situation replayed through a real :class:`~dcrec.device.runtime.DeviceRuntime`:
    ``(features (M, F), gains (M,))``.

    For the ``j``-th user the cloud ``gen`` (which never trained on the user's last
    ``lags[j]`` + 1 items) made a list from the history ``lags[j]`` events before the end; the runtime holds it while the device
    records those events; its features are read, and the fused list shown then is scored on
    the last item against the list shown once the fresh list (from the whole history) arrives.
    """
    from dcrec.device.policy import NeverPolicy
    from dcrec.device.runtime import DeviceRuntime
    from dcrec.device.store import CachedList, DeviceStore

    x = np.zeros((len(users), len(FEATURES)))
    gain = np.zeros(len(users))
    workdir.mkdir(parents=True, exist_ok=True)
    for j, u in enumerate(users):
        seq = np.asarray(sequences[u], dtype=np.int64)
        target, hist = int(seq[-1]), seq[:-1]
        view = hist[: hist.size - int(lags[j])]
        stale, fresh = gen.generate([view, hist], count, exclude_seen=True)
        path = workdir / f"replay-{j}.sqlite"
        path.unlink(missing_ok=True)
        store = DeviceStore(path)
        try:
            for t, item in enumerate(view):
                store.append(int(item), float(t))
            rt = DeviceRuntime(f"replay-{j}", store, reranker, None, NeverPolicy(), config,
                               clock=lambda: 0.0, neighbours=neighbours)
            rt.adopt(CachedList(stale.items, stale.scores, "stale", gen.version, 0.0, 1e12))
            for t, item in enumerate(hist[view.size:], start=view.size):
                rt.record(int(item), float(t))
            feats = rt.request_features(temperature, show, top)
            stale_dcg = _dcg_at(rt.recommend(), target, show)
            rt.adopt(CachedList(fresh.items, fresh.scores, "fresh", gen.version, float(hist.size), 1e12))
            gain[j] = _dcg_at(rt.recommend(), target, show) - stale_dcg
            x[j] = feats if feats is not None else 0.0
        finally:
            store.close()
            path.unlink(missing_ok=True)
        if progress is not None and (j + 1) % 500 == 0:
            progress(j + 1, len(users))
    return x, gain


def _replay_plan(sequences: list[np.ndarray], users: int, max_lag: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(users chosen, their lags, the fold cloud's training sequences): each chosen user loses
    its last lag + 1 items."""
    if max_lag < 1:
        raise ValueError(f"max_lag must be >= 1, got {max_lag}")
    long_enough = np.flatnonzero([len(s) >= 4 for s in sequences])
    if long_enough.size < 50:
        raise ValueError(f"only {long_enough.size} training users have 4 events or more; "
                         "a request model needs at least 50")
    rng = np.random.default_rng([seed, 23])
    chosen = np.sort(rng.choice(long_enough, min(users, long_enough.size), replace=False))
    most = np.minimum(max_lag, np.array([len(sequences[u]) - 3 for u in chosen]))
    lags = 1 + np.floor(rng.random(chosen.size) * most).astype(np.int64)
    lag_of = dict(zip(chosen.tolist(), lags.tolist(), strict=True))
    fold = [s[: len(s) - 1 - lag_of[i]] if i in lag_of else s for i, s in enumerate(sequences)]
    return chosen, lags, fold


def fold_cloud(dataset: Any, sequences: list[np.ndarray], workdir: Path, backend: str,
               options: dict[str, Any], users: int = 3000, max_lag: int = 8, seed: int = 0,
               say: Callable[[str], None] = lambda s: None) -> Any:
    """The fold cloud :func:`train_request_model` replays with (trained, or reused from
    ``workdir``). It does not depend on the device model, so it can be trained beside it
    (``dcrec demo`` does) and found again by the same arguments."""
    from dcrec.cloud.models.backends import trained_backend

    _, _, fold = _replay_plan(sequences, users, max_lag, seed)
    return trained_backend(dataset, backend, options, fold, workdir / "fold-cloud", True, say)


def train_request_model(dataset: Any, sequences: list[np.ndarray], device_model_dir: Path,
                        out: Path, workdir: Path, backend: str, options: dict[str, Any],
                        neighbours: Path | None = None, users: int = 3000, max_lag: int = 8,
                        seed: int = 0, config: Any = None,
                        say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The request-value model for the device model in ``device_model_dir`` (model.onnx and
    model.json), written to ``out`` as JSON; returns a summary.

    ``users`` training users (at least 4 events) each get a lag, uniform in 1 .. ``max_lag``
    (at most their length less 3): the events between the list and the label, so the model
    sees lists of every age. Each loses its last lag + 1 items from the training data of a
    fold cloud (``backend``, ``options``: what ``dcrec cloud train`` ran): as on a phone,
    the cloud that made a replayed list has seen neither the events since nor the item that
    labels it. The fold cloud is kept in ``workdir`` and reused when nothing changed
    (:func:`fold_cloud`).
    """
    import json

    from dcrec.device.reranker import OnnxReranker
    from dcrec.device.runtime import RuntimeConfig
    from dcrec.shared.fileio import write_atomic
    from dcrec.shared.neighbours import NeighbourIndex

    chosen, lags, _ = _replay_plan(sequences, users, max_lag, seed)
    gen = fold_cloud(dataset, sequences, workdir, backend, options, users, max_lag, seed, say)
    meta = json.loads((device_model_dir / "model.json").read_text())
    reranker = OnnxReranker((device_model_dir / "model.onnx").read_bytes(), int(meta["max_len"]),
                            "replay", 1, meta.get("n_items"))
    index = NeighbourIndex.load(neighbours) if neighbours is not None else None
    say(f"replaying {chosen.size} users through the device runtime")
    x, gain = replay(sequences, chosen, gen, reranker, index, config or RuntimeConfig(), lags,
                     workdir / "stores", progress=lambda d, n: say(f"replayed {d}/{n}"))
    model = fit_request_model(x, gain, seed=seed)
    write_atomic(out, json.dumps(model.to_dict()).encode())
    summary = {"users": int(chosen.size), "mean_gain": float(gain.mean()),
               "helped": float((gain > 0).mean()), "hurt": float((gain < 0).mean()),
               "pick_gain": pick_gain(model.predict(x), gain), "pick_gain_random": float(
                   np.mean([r * gain.mean() for r in PICK_RATIOS]))}
    return summary
