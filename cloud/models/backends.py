"""Registry of candidate-generator backends: a name maps to a trainer and a loader.

A trained model is a directory holding ``backend.json`` (``{"backend": NAME,
"version": ...}``) plus whatever files the backend needs. The server loads any
such directory through :func:`load_generator` and never knows which backend it
holds. A new backend is one new module exposing::

    train(dataset: Dataset, train_sequences: list[np.ndarray], out_dir: Path,
          options: dict[str, object], resume: bool = False) -> None
    load_generator(model_dir: Path) -> CandidateGenerator

and one line in ``BACKENDS``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.shared.data import Dataset
from dcrec.shared.fileio import write_atomic
from dcrec.shared.system import SYSTEM

# name -> module implementing train() and load_generator(); imported lazily so
# that a server for one backend never imports another's heavy dependencies.
BACKENDS: dict[str, str] = {
    "cooccurrence": "dcrec.cloud.models.cooccurrence",
    "textrec": "dcrec.cloud.models.textrec.backend",
    "llm": "dcrec.cloud.models.llm.backend",
    "ensemble": "dcrec.cloud.models.ensemble",
}

MANIFEST = "backend.json"
# What ``dcrec cloud train``, the quality harness, the simulator and the demo train when no
# backend is named: textrec (item text through MiniLM) and co-occurrence, blended with
# weights chosen on validation users (docs/CLOUD_MODELS.md).
DEFAULT_BACKEND = SYSTEM.cloud.backend  # the system's cloud (dcrec.shared.system)


class BackendError(ValueError):
    """Unknown backend or unreadable model directory."""


def _module(name: str) -> Any:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def train(
    name: str,
    dataset: Dataset,
    train_sequences: list[np.ndarray],
    out_dir: str | Path,
    options: dict[str, Any] | None = None,
    resume: bool = False,
) -> Path:
    """Train backend ``name`` and write its model directory; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _module(name).train(dataset, train_sequences, out, dict(options or {}), resume=resume)
    if not (out / MANIFEST).is_file():
        raise BackendError(f"backend {name!r} wrote no {MANIFEST} in {out}")
    return out


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BackendError(f"{path}: not a model directory (no {MANIFEST})") from e
    except json.JSONDecodeError as e:
        raise BackendError(f"{path}: invalid JSON: {e}") from e
    if manifest.get("backend") not in BACKENDS:
        raise BackendError(f"{path}: unknown backend {manifest.get('backend')!r}")
    return manifest


def write_manifest(model_dir: str | Path, backend: str, version: str, **extra: Any) -> None:
    """Write ``backend.json`` last, so a half-written directory never loads."""
    write_atomic(Path(model_dir) / MANIFEST,
                 json.dumps({"backend": backend, "version": version, **extra}, indent=2))


def load_generator(model_dir: str | Path) -> CandidateGenerator:
    """Load whichever backend trained ``model_dir``."""
    manifest = read_manifest(model_dir)
    gen = _module(manifest["backend"]).load_generator(Path(model_dir))
    if not isinstance(gen, CandidateGenerator):
        raise BackendError(f"{model_dir}: backend returned {type(gen).__name__}, not a CandidateGenerator")
    return gen


REUSE_MARKER = "harness.json"  # what a reusable trained model was trained on (trained_backend)


def _model_key(ds: Dataset, backend: str, options: dict[str, Any],
               sequences: list[np.ndarray]) -> dict[str, Any]:
    """Backend, options and a digest of the training sequences: what decides a trained model."""
    h = hashlib.sha256()
    for seq in sequences:
        h.update(np.asarray(seq, dtype=np.int64).tobytes())
        h.update(b"|")
    key = {"backend": backend, "options": options, "n_items": ds.n_items,
           "sequences": len(sequences), "sha256": h.hexdigest()}
    return json.loads(json.dumps(key))  # as it reads back from the file


def trained_backend(ds: Dataset, backend: str, options: dict[str, Any], sequences: list[np.ndarray],
                    out: Path, reuse: bool,
                    say: Callable[[str], None] = lambda s: None) -> CandidateGenerator:
    """``backend`` trained on ``sequences`` in ``out``; with ``reuse``, the one already there
    when it was trained on the same sequences with the same backend and options."""
    key = _model_key(ds, backend, options, sequences)
    marker = out / REUSE_MARKER
    if reuse and marker.is_file() and (out / MANIFEST).is_file():
        try:
            same = json.loads(marker.read_text()) == key
        except ValueError:
            same = False
        if same:
            say(f"reusing the cloud model ({backend}) in {out}")
            return load_generator(out)
    say(f"training the cloud model ({backend}) on the cloud's view")
    marker.unlink(missing_ok=True)
    train(backend, ds, sequences, out, options)
    marker.write_text(json.dumps(key, indent=2))
    return load_generator(out)
