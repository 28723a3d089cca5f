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

from dcrec.shared.data import Dataset, load_dataset  # noqa: E402
from dcrec.shared.splits import TimeSplit, time_split  # noqa: E402


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    return load_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml_split(ml100k: Dataset) -> TimeSplit:
    return time_split(ml100k, 0.8)


@pytest.fixture(scope="session")
def cloud_model_dir(tmp_path_factory: pytest.TempPathFactory, ml100k: Dataset,
                    ml_split: TimeSplit) -> Path:
    from dcrec.cloud.models import backends

    out = tmp_path_factory.mktemp("cloud")
    backends.train("cooccurrence", ml100k, ml_split.cloud_sequences(), out)
    return out


@pytest.fixture(scope="session")
def device_model_dir(tmp_path_factory: pytest.TempPathFactory, ml100k: Dataset,
                     ml_split: TimeSplit) -> Path:
    """A real SASRec, trained briefly on the cloud side, exported to model.onnx."""
    from dcrec.cloud.training.export import export_onnx
    from dcrec.cloud.training.train import TrainConfig, load_sasrec, train_sasrec

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
    from dcrec.cloud.releases.registry import ModelRegistry

    root = tmp_path_factory.mktemp("registry")
    config = json.loads((device_model_dir / "model.json").read_text())
    ModelRegistry(root).publish(device_model_dir / "model.onnx", config, version="v1")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- the device-only install, for real --------------------------------------------------------
# A wheel built from a copy of the tree, unpacked into a virtual environment made with
# ``venv --without-pip`` (which sees none of this environment's packages), beside links to
# exactly the distributions that dcrec's core requirements need (no extras). This is what
# ``pip install dcrec`` gives an app: torch is not blocked but absent, and any undeclared
# import fails.

_WHEEL_SOURCES = ("cloud", "device", "shared", "simulator", "protos", "pyproject.toml", "README.md")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dcrec's wheel, built without network or build isolation from a copy of the tree."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path_factory.mktemp("wheel-src")
    for name in _WHEEL_SOURCES:
        if (repo / name).is_dir():
            shutil.copytree(repo / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(repo / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(src)],
                   check=True, timeout=300, capture_output=True)
    [whl] = out.glob("dcrec-*.whl")
    return whl


def _runtime_closure(root: str) -> set[str]:
    """Names of the distributions ``root`` needs at run time (extras left out)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    todo, done = [root], set()
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in done:
            continue
        done.add(key)
        for spec in md.distribution(name).requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return done


@pytest.fixture(scope="session")
def device_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """The python of a fresh virtual environment holding only the device install."""
    import importlib.metadata as md
    import subprocess
    import sys
    import zipfile

    try:
        dists = _runtime_closure("dcrec") - {"dcrec"}
    except md.PackageNotFoundError:
        pytest.skip("dcrec is not installed as a distribution")
    root = tmp_path_factory.mktemp("device-venv")
    deps = root / "deps"
    deps.mkdir()
    for name in sorted(dists):
        dist = md.distribution(name)
        base = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = base / top
            if top.endswith(".pth") or top == ".." or not src.exists() or (deps / top).exists():
                continue
            os.symlink(src, deps / top)
    venv = root / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:  # a pure wheel: unpacking into purelib is installing it
        z.extractall(purelib)
    (purelib / "device_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    return py



# --- the documented TLS recipe ------------------------------------------------------------------
# docs/OPERATIONS.md's certificate recipe, run verbatim (the sh block after its marker line):
# the tests that need certificates make them exactly as an operator would.

_OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md"
_TLS_MARKER = "<!-- tls-recipe -->"
_RECIPE_SAN = 'SAN="DNS:localhost,IP:127.0.0.1"'


def tls_recipe() -> str:
    """The fenced sh block right after the marker line."""
    import re

    text = _OPERATIONS.read_text(encoding="utf-8")
    m = re.search(re.escape(_TLS_MARKER) + r"\n```sh\n(.*?)\n```\n", text, re.DOTALL)
    assert m, f"no ```sh block right after {_TLS_MARKER} in {_OPERATIONS}"
    return m.group(1)


@pytest.fixture(scope="session")
def run_tls_recipe():  # type: ignore[no-untyped-def]
    """``run(out, san=None) -> out``: the recipe run in a new folder ``out``; ``san`` replaces
    the server certificate's subjectAltName."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the documented TLS recipe needs the openssl command")

    def run(out: Path, san: str | None = None) -> Path:
        script = tls_recipe()
        if san is not None:
            assert script.count(_RECIPE_SAN) == 1
            script = script.replace(_RECIPE_SAN, f'SAN="{san}"')
        out.mkdir(parents=True)
        done = subprocess.run(["bash", "-euo", "pipefail"], input=script, cwd=out, text=True,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, f"recipe failed:\n{done.stdout}\n{done.stderr}"
        return out

    return run


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, run_tls_recipe) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Two certificate authorities from the recipe, each with its server and device certificates."""
    root = tmp_path_factory.mktemp("pki")
    return run_tls_recipe(root / "ours"), run_tls_recipe(root / "other")
