"""Shared fixtures: real data (MovieLens-100K from the recbole package), real trained models.

Everything is built once per session in a temporary folder: a co-occurrence
cloud model, a small SASRec trained for one epoch and exported to ONNX, and a
device-model registry holding it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared.data import Dataset, load_dataset  # noqa: E402
from shared.splits import TimeSplit, time_split  # noqa: E402


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    return load_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml_split(ml100k: Dataset) -> TimeSplit:
    return time_split(ml100k, 0.8)


@pytest.fixture(scope="session")
def cloud_model_dir(tmp_path_factory: pytest.TempPathFactory, ml100k: Dataset,
                    ml_split: TimeSplit) -> Path:
    from cloud import backends

    out = tmp_path_factory.mktemp("cloud")
    backends.train("cooccurrence", ml100k, ml_split.cloud_sequences(), out)
    return out


@pytest.fixture(scope="session")
def device_model_dir(tmp_path_factory: pytest.TempPathFactory, ml100k: Dataset,
                     ml_split: TimeSplit) -> Path:
    """A real SASRec, trained briefly on the cloud side, exported to model.onnx."""
    from device.training.export import export_onnx
    from device.training.train import TrainConfig, load_sasrec, train_sasrec

    out = tmp_path_factory.mktemp("device")
    train_sasrec(ml_split.cloud_sequences(), ml100k.n_items,
                 TrainConfig(epochs=1, model={"dim": 32, "layers": 1, "heads": 1}), out)
    model = load_sasrec(out)
    export_onnx(model, out / "model.onnx")
    (out / "model.json").write_text(json.dumps({"max_len": model.cfg.max_len,
                                                "n_items": model.cfg.n_items}))
    return out


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory, device_model_dir: Path) -> Path:
    from cloud.registry import ModelRegistry

    root = tmp_path_factory.mktemp("registry")
    config = json.loads((device_model_dir / "model.json").read_text())
    ModelRegistry(root).publish(device_model_dir / "model.onnx", config, version="v1")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
