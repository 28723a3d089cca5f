"""The distribution an app installs: one namespace, typed, the contract inside, lean and honest.

The wheel is built from a copy of the tree (``wheel`` in tests/conftest.py) and the
device-only environment holds nothing else (``device_venv``).
"""

from __future__ import annotations

import os
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dcrec.shared.cli import EXTRAS

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"cloud": "dcrec.cloud", "device": "dcrec.device", "shared": "dcrec.shared",
           "simulator": "dcrec.simulator", "protos": "dcrec.protos"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def test_pyproject_lists_every_package_of_the_tree() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {v: k for k, v in FOLDERS.items()}
    found = {FOLDERS[init.relative_to(REPO).parts[0]] + "".join(
        f".{p}" for p in init.parent.relative_to(REPO).parts[1:])
        for folder in FOLDERS for init in (REPO / folder).rglob("__init__.py")}
    assert sorted(setuptools["packages"]) == sorted(found)


def test_the_wheel_holds_one_namespace_typed_with_its_contract(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"dcrec", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for pkg in ("cloud", "device", "shared", "simulator"):
        assert f"dcrec/{pkg}/py.typed" in names
    for data in ("dcrec/protos/dcrec/v1/recommend.proto", "dcrec/shared/proto/dcrec/v1/recommend_pb2.pyi",
                 "dcrec/simulator/scenarios/steady.toml", "dcrec/cloud/serving/http/static/dashboard.html"):
        assert data in names, data
    assert not any(n.startswith(("dcrec/tests", "tests/")) for n in names)


def test_core_dependencies_are_ranges_an_app_can_live_with() -> None:
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{spec} is an exact pin"
        assert any(s.operator in ("<", "<=", "~=") for s in req.specifier) or req.name in (
            "numpy", "onnxruntime", "sqlite-utils"), f"{spec}: no upper bound on a fast-moving API"


def test_the_missing_extra_hints_name_real_extras() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, (dist, extra) in EXTRAS.items():
        assert any(Requirement(s).name == dist for s in extras[extra]), f"{module}: {dist} not in [{extra}]"


def test_the_device_install_claims_no_generic_names(device_venv: Path) -> None:
    for name in ("shared", "device", "cloud", "simulator"):
        out = subprocess.run([str(device_venv), "-c", f"import {name}"], capture_output=True,
                             text=True, timeout=60, cwd=device_venv.parent, env=_env())
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, name
    out = subprocess.run([str(device_venv), "-c",
                          "import importlib.resources as r, dcrec.device.runtime; "
                          "print(r.files('dcrec.protos').joinpath('dcrec/v1/recommend.proto').read_text())"],
                         capture_output=True, text=True, timeout=60, cwd=device_venv.parent, env=_env())
    assert out.returncode == 0, out.stderr
    assert "package dcrec.v1;" in out.stdout and "service Recommender" in out.stdout


@pytest.mark.parametrize("args, extra", [
    (["device", "train", "--dataset", "ml-100k", "--out", "m"], "cloud"),
    (["simulate", "--scenario", "steady", "--out", "s"], "cloud"),
])
def test_a_command_needing_a_missing_extra_names_it(device_venv: Path, tmp_path: Path,
                                                    args: list[str], extra: str) -> None:
    out = subprocess.run([str(device_venv), "-m", "dcrec.shared.cli", *args], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=_env())
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert f"pip install 'dcrec[{extra}]'" in out.stderr
