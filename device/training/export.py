"""Export a trained reranker to ONNX with dynamic batch, history and candidate axes.

The graph takes ``history`` (B, L) int64 and ``candidates`` (B, C) int64 and
returns ``scores`` (B, C) float32. After export the file is checked against
torch on random inputs with ONNX Runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from device.training.sasrec import CandidateScorer, SASRec

log = logging.getLogger(__name__)

OPSET = 17


def export_onnx(model: SASRec, path: str | Path, check: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh wrapper starts in training mode, and export restores the wrapper's
    # mode afterwards, which would switch dropout on in ``model``: set eval on both.
    scorer = CandidateScorer(model).eval()
    n = model.cfg.n_items
    history = torch.randint(1, n + 1, (2, model.cfg.max_len))
    candidates = torch.randint(1, n + 1, (2, 7))
    torch.onnx.export(
        scorer, (history, candidates), str(path),
        input_names=["history", "candidates"], output_names=["scores"],
        dynamic_axes={"history": {0: "batch", 1: "history_len"},
                      "candidates": {0: "batch", 1: "n_candidates"},
                      "scores": {0: "batch", 1: "n_candidates"}},
        opset_version=OPSET, dynamo=False,
    )
    model.eval()
    if check:
        err = parity_error(model, path)
        log.info("exported %s (%d bytes), max |onnx - torch| = %.2e", path, path.stat().st_size, err)
        if err > 1e-4:
            raise RuntimeError(f"ONNX export differs from torch by {err:.2e}")
    return path


def parity_error(model: SASRec, path: str | Path, seed: int = 0) -> float:
    """Largest absolute score difference between torch and ONNX Runtime on random inputs."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    n = model.cfg.n_items
    for b, length, c in [(1, model.cfg.max_len, 100), (3, 5, 20), (2, model.cfg.max_len, 1)]:
        hist = rng.integers(1, n + 1, (b, length))
        hist[0, : length // 2] = 0  # a left-padded row
        cand = rng.integers(1, n + 1, (b, c))
        with torch.no_grad():
            ref = model.score(torch.from_numpy(hist), torch.from_numpy(cand)).numpy()
        got = sess.run(["scores"], {"history": hist, "candidates": cand})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst
