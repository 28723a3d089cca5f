"""Fitting the request-value model (:mod:`dcrec.shared.request_value`) in the cloud.

The rows are replayed device situations (:func:`dcrec.shared.request_value.situation_features`)
whose label is what a fresh list gained on the user's next item: NDCG@10 of the fused fresh
list minus that of the fused stale list, from cloud lists made without that item (out of
fold). The gain is zero for most rows and its sign is noisy, so the network is small (one
tanh layer of 16), weight-decayed, trained full-batch, and stopped on held-out rows by what a
budget buys: the mean gain of the rows it would pick at 5 % and 10 % requests.

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

#: The request shares the held-out rows are scored at while training.
PICK_RATIOS = (0.05, 0.10)


def pick_gain(score: np.ndarray, gain: np.ndarray, ratios: tuple[float, ...] = PICK_RATIOS) -> float:
    """Mean over ``ratios`` of the gain per row when the top share of rows by ``score`` gets a
    fresh list (the budget's worth of a score)."""
    order = np.argsort(-score, kind="stable")
    return float(np.mean([gain[order[: max(1, int(round(r * score.size)))]].sum() / score.size
                          for r in ratios]))


def fit_request_model(x: np.ndarray, gain: np.ndarray, seed: int = 0, hidden: int = 16,
                      weight_decay: float = 1e-3, lr: float = 1e-2, max_steps: int = 3000,
                      check_every: int = 25, patience: int = 12, holdout: float = 0.2,
                      temperature: float = 2.0, show: int = 10, top: int = 20) -> RequestValueModel:
    """The model of ``gain`` (M,) from features ``x`` (M, F), stopped on a held-out share."""
    import torch

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
    mean = x[fit].mean(0)
    std = x[fit].std(0)
    std = np.where(std > 1e-9, std, 1.0)
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(gain, dtype=torch.float32)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(),
                              torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    fit_t, hold_t = torch.as_tensor(fit), torch.as_tensor(hold)
    best, best_state, bad = -np.inf, None, 0
    for step in range(max_steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(xt[fit_t]).squeeze(1), yt[fit_t])
        loss.backward()
        opt.step()
        if step % check_every == check_every - 1:
            with torch.no_grad():
                score = net(xt[hold_t]).squeeze(1).numpy().astype(np.float64)
            value = pick_gain(score, gain[hold])
            if value > best + 1e-9:
                best, bad = value, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    w1 = net[0].weight.detach().numpy().astype(np.float64).T
    b1 = net[0].bias.detach().numpy().astype(np.float64)
    w2 = net[2].weight.detach().numpy().astype(np.float64)[0]
    b2 = float(net[2].bias.detach().numpy()[0])
    return RequestValueModel(mean, std, w1, b1, w2, b2, temperature, show, top)


def _dcg_at(shown: np.ndarray, target: int, k: int = 10) -> float:
    hit = np.flatnonzero(np.asarray(shown)[:k] == target)
    return float(1.0 / np.log2(hit[0] + 2.0)) if hit.size else 0.0


def replay(sequences: list[np.ndarray], users: np.ndarray, gen: Any, reranker: Any,
           neighbours: Any, config: Any, lag: int, workdir: Path, count: int = 100,
           temperature: float = 2.0, show: int = 10, top: int = 20,
           progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's situation replayed through a real :class:`~dcrec.device.runtime.DeviceRuntime`:
    ``(features (M, F), gains (M,))``.

    For user ``u`` the cloud ``gen`` (which never trained on the user's last item) made a
    list from the history ``lag`` events before the end; the runtime holds it while the device
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
        view = hist[: hist.size - lag]
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


def train_request_model(dataset: Any, sequences: list[np.ndarray], device_model_dir: Path,
                        out: Path, workdir: Path, backend: str, options: dict[str, Any],
                        neighbours: Path | None = None, users: int = 3000, lag: int = 2,
                        seed: int = 0, config: Any = None,
                        say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The request-value model for the device model in ``device_model_dir`` (model.onnx and
    model.json), written to ``out`` as JSON; returns a summary.

    ``users`` training users (at least ``lag`` + 3 events) lose their last item from the
    training data of a fold cloud (``backend``, ``options``: what ``dcrec cloud train`` ran),
    so the lists replayed for them are out of fold; the fold cloud is kept in ``workdir``
    and reused when nothing changed.
    """
    import json

    from dcrec.cloud.models.backends import trained_backend
    from dcrec.device.reranker import OnnxReranker
    from dcrec.device.runtime import RuntimeConfig
    from dcrec.shared.fileio import write_atomic
    from dcrec.shared.neighbours import NeighbourIndex

    if lag < 1:
        raise ValueError(f"lag must be >= 1, got {lag}")
    long_enough = np.flatnonzero([len(s) >= lag + 3 for s in sequences])
    if long_enough.size < 50:
        raise ValueError(f"only {long_enough.size} training users have {lag + 3} events or more; "
                         "a request model needs at least 50")
    rng = np.random.default_rng([seed, 23])
    chosen = np.sort(rng.choice(long_enough, min(users, long_enough.size), replace=False))
    held = set(chosen.tolist())
    fold_sequences = [s[:-1] if i in held else s for i, s in enumerate(sequences)]
    gen = trained_backend(dataset, backend, options, fold_sequences, workdir / "fold-cloud", True, say)
    meta = json.loads((device_model_dir / "model.json").read_text())
    reranker = OnnxReranker((device_model_dir / "model.onnx").read_bytes(), int(meta["max_len"]),
                            "replay", 1, meta.get("n_items"))
    index = NeighbourIndex.load(neighbours) if neighbours is not None else None
    say(f"replaying {chosen.size} users through the device runtime")
    x, gain = replay(sequences, chosen, gen, reranker, index, config or RuntimeConfig(), lag,
                     workdir / "stores", progress=lambda d, n: say(f"replayed {d}/{n}"))
    model = fit_request_model(x, gain, seed=seed)
    write_atomic(out, json.dumps(model.to_dict()).encode())
    summary = {"users": int(chosen.size), "mean_gain": float(gain.mean()),
               "helped": float((gain > 0).mean()), "hurt": float((gain < 0).mean()),
               "pick_gain": pick_gain(model.predict(x), gain), "pick_gain_random": float(
                   np.mean([r * gain.mean() for r in PICK_RATIOS]))}
    return summary
