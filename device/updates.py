"""Fetching the reranker from the cloud: verify first, swap atomically, keep the old on failure.

The sha256 of the delivered bytes is checked before ONNX Runtime reads a byte;
the file is written to a temporary name and renamed into place; only a model
that loads and has the expected inputs replaces the one in use.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from device.client import CloudClient, CloudUnavailable
from device.reranker import ModelLoadError, OnnxReranker
from shared.contract import DeviceModel

log = logging.getLogger(__name__)


class ModelRejected(RuntimeError):
    """The delivered model failed verification; the device keeps its current model."""


def verify(model: DeviceModel) -> None:
    digest = hashlib.sha256(model.onnx).hexdigest()
    if digest != model.sha256:
        raise ModelRejected(f"model {model.version}: sha256 {digest[:12]} does not match "
                            f"the announced {model.sha256[:12]}")
    max_len = model.config.get("max_len")
    if not isinstance(max_len, int) or max_len < 1:
        raise ModelRejected(f"model {model.version}: config has no valid max_len")


def install(model: DeviceModel, model_dir: str | Path, threads: int = 1) -> OnnxReranker:
    """Verify, load and persist ``model``; raises ModelRejected and leaves the old file alone."""
    verify(model)
    try:
        reranker = OnnxReranker(model.onnx, int(model.config["max_len"]), model.version, threads)  # type: ignore[call-overload]
    except ModelLoadError as e:
        raise ModelRejected(f"model {model.version}: {e}") from e
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "model.onnx.tmp"
    tmp.write_bytes(model.onnx)
    os.replace(tmp, d / "model.onnx")
    (d / "VERSION.tmp").write_text(f"{model.version}\n{model.config['max_len']}\n")
    os.replace(d / "VERSION.tmp", d / "VERSION")
    return reranker


def load_installed(model_dir: str | Path, threads: int = 1) -> OnnxReranker | None:
    """The model installed earlier in ``model_dir``, or None."""
    d = Path(model_dir)
    if not (d / "VERSION").is_file() or not (d / "model.onnx").is_file():
        return None
    version, max_len = (d / "VERSION").read_text().split()[:2]
    return OnnxReranker.from_file(d / "model.onnx", int(max_len), version, threads)


def update(client: CloudClient, device_id: str, model_dir: str | Path,
           current: OnnxReranker | None, threads: int = 1) -> OnnxReranker | None:
    """Ask the cloud for a newer model; returns the reranker to use from now on.

    Any failure (cloud down, bad digest, unloadable file) returns ``current``.
    """
    try:
        model = client.get_device_model(device_id, current.version if current else "")
    except CloudUnavailable as e:
        log.info("%s: model update skipped, cloud unavailable (%s)", device_id, e)
        return current
    if model is None:
        return current
    try:
        return install(model, model_dir, threads)
    except ModelRejected as e:
        log.warning("%s: %s; keeping %s", device_id, e, current.version if current else "no model")
        return current
