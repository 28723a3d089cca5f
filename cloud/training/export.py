"""Export any device reranker to ONNX with dynamic batch, history and candidate axes.

The graph takes ``history`` (B, L) int64 (left-padded) and ``candidates``
(B, C) int64 and returns ``scores`` (B, C) float32 plus
``candidate_embeddings`` (B, C, D) float32, the candidates' rows of the item
embedding table, which the device's per-user adaptation works in (so no side
file travels with the model). Architectures whose score is a dot product with a
user vector (``user_vector``: SASRec, GRU4Rec) also return ``user`` (B, D): the
device then runs the network once per event and scores any candidates, or the
whole catalogue, with one matrix product (:class:`dcrec.device.reranker.OnnxReranker`).
After export the file is checked against torch
on random inputs with ONNX Runtime. The file's metadata (``metadata_props``,
all strings) carries the facts the device checks a release config against:
``max_len``, ``n_items``, ``padding_id`` (always 0), ``arch`` and the
``dcrec_version`` that exported it (the model version is assigned later, at
publish, from the file's digest, so it is not among them). :func:`quantize_int8`
writes an int8 variant (weights quantised, activations quantised on the fly).

Example::

    export_onnx(model, "runs/dev/model.onnx")        # raises if ONNX and torch differ > 1e-4
    quantize_int8("runs/dev/model.onnx", "runs/dev/model.int8.onnx")
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcrec.device.reranker import (
    PADDING_ID,  # the device's padding, which every arch's item_emb row 0 is
)

log = logging.getLogger(__name__)

OPSET = 17
OUTPUTS = ["scores", "candidate_embeddings"]
USER = "user"  # (B, D), for architectures with ``user_vector``


def outputs_of(model: nn.Module) -> list[str]:
    """The graph outputs ``model`` exports: :data:`OUTPUTS`, plus ``user`` when it has one."""
    return OUTPUTS + ([USER] if callable(getattr(model, "user_vector", None)) else [])


class ExportedScorer(nn.Module):
    """The exported graph: (history (B, L), candidates (B, C)) -> (scores (B, C), embeddings
    (B, C, D)[, user (B, D)])."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.with_user = USER in outputs_of(model)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.with_user:
            return self.model.score(history, candidates), self.model.item_emb(candidates)
        user = self.model.user_vector(history)  # (B, D); score = candidates' rows . user
        emb = self.model.item_emb(candidates)
        return (emb * user[:, None, :]).sum(-1), emb, user


def model_metadata(model: nn.Module) -> dict[str, str]:
    """The facts about ``model`` written into its ONNX file's metadata (see the module docstring)."""
    from dcrec.cloud.training.archs import arch_of

    meta = {"max_len": str(model.cfg.max_len), "n_items": str(model.cfg.n_items),
            "padding_id": str(PADDING_ID)}
    try:
        meta["arch"] = arch_of(model)
    except ValueError:  # an unregistered module still exports, without a name
        pass
    try:
        meta["dcrec_version"] = importlib.metadata.version("dcrec")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        pass
    return meta


def write_metadata(path: str | Path, meta: dict[str, str]) -> None:
    """Set ``meta`` as the ONNX file's ``metadata_props`` (replacing keys of the same name)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, check: bool = True) -> Path:
    """Write ``model`` (any architecture in :mod:`dcrec.cloud.training.archs`) to ``path`` as ONNX,
    with :func:`model_metadata` in the file's metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh wrapper starts in training mode, and export restores the wrapper's
    # mode afterwards, which would switch dropout on in ``model``: set eval on both.
    scorer = ExportedScorer(model).eval()
    n, max_len = model.cfg.n_items, model.cfg.max_len
    history = torch.randint(1, n + 1, (2, max_len))
    candidates = torch.randint(1, n + 1, (2, 7))
    torch.onnx.export(
        scorer, (history, candidates), str(path),
        input_names=["history", "candidates"], output_names=outputs_of(model),
        dynamic_axes={"history": {0: "batch", 1: "history_len"},
                      "candidates": {0: "batch", 1: "n_candidates"},
                      "scores": {0: "batch", 1: "n_candidates"},
                      "candidate_embeddings": {0: "batch", 1: "n_candidates"},
                      **({USER: {0: "batch"}} if USER in outputs_of(model) else {})},
        opset_version=OPSET, dynamo=False,
    )
    model.eval()
    write_metadata(path, model_metadata(model))
    if check:
        err = parity_error(model, path)
        log.info("exported %s (%d bytes), max |onnx - torch| = %.2e", path, path.stat().st_size, err)
        if err > 1e-4:
            raise RuntimeError(f"ONNX export differs from torch by {err:.2e}")
    return path


def parity_error(model: nn.Module, path: str | Path, seed: int = 0) -> float:
    """Largest absolute score difference between torch and ONNX Runtime on random inputs.

    Covers a full-length history, short and left-padded ones, one candidate,
    and a history longer than ``max_len`` is not fed (the runtime cuts it).
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    n, max_len = model.cfg.n_items, model.cfg.max_len
    for b, length, c in [(1, max_len, 100), (3, 5, 20), (2, max_len, 1), (4, 1, 9)]:
        hist = rng.integers(1, n + 1, (b, length))
        hist[0, : length // 2] = 0  # a left-padded row
        if b > 2:
            hist[-1, :] = 0  # an empty history
        cand = rng.integers(1, n + 1, (b, c))
        with torch.no_grad():
            ref = model.score(torch.from_numpy(hist), torch.from_numpy(cand)).numpy()
            ref_emb = model.item_emb(torch.from_numpy(cand)).numpy()
        got, emb = sess.run(OUTPUTS, {"history": hist, "candidates": cand})
        worst = max(worst, float(np.abs(ref - got).max()), float(np.abs(ref_emb - emb).max()))
        if USER in outputs_of(model):  # the device scores with user . table rows: check that too
            (user,) = sess.run([USER], {"history": hist, "candidates": cand})
            worst = max(worst, float(np.abs((ref_emb * user[:, None, :]).sum(-1) - ref).max()))
    return worst


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Write a dynamically quantised (int8 weights) copy of ``src`` to ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    log.info("int8 model %s: %d bytes (float32 %d)", dst, dst.stat().st_size, Path(src).stat().st_size)
    return dst
