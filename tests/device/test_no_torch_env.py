"""The device runtime runs in a fresh environment holding only its declared dependencies: no torch at all.

A virtual environment made with ``python -m venv --without-pip`` sees none of
this environment's packages. A directory is filled with links to exactly the
distributions that ``dcrec``'s core requirements need (the transitive closure,
no extras), and one ``.pth`` file puts it and the repository on the path.
torch is then not blocked but absent, and any undeclared import fails.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _closure(root: str) -> set[str]:
    """Names of the distributions ``root`` needs at run time (extras left out)."""
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


def _link_site(dists: set[str], site: Path) -> None:
    site.mkdir(parents=True)
    for name in sorted(dists):
        dist = md.distribution(name)
        base = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = base / top
            if top.endswith(".pth") or top == ".." or not src.exists() or (site / top).exists():
                continue
            os.symlink(src, site / top)


@pytest.mark.timeout(300)
def test_runtime_in_a_venv_without_torch(device_model_dir: Path, tmp_path: Path) -> None:
    try:
        dists = _closure("dcrec") - {"dcrec"}
    except md.PackageNotFoundError:
        pytest.skip("dcrec is not installed as a distribution")
    assert "torch" not in dists and "numpy" in dists and "onnxruntime" in dists
    site = tmp_path / "site"
    _link_site(dists, site)
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "device_deps.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n{REPO}\n")
    code = f"""
import importlib.util, sys
assert importlib.util.find_spec("torch") is None, "torch is installed in this environment"
import numpy as np
from device.runtime import DeviceRuntime, RuntimeConfig
from device.reranker import OnnxReranker
from device.store import CachedList, DeviceStore
from device.policy import make_policy
rr = OnnxReranker.from_file({str(device_model_dir / 'model.onnx')!r}, 50)
store = DeviceStore({str(tmp_path / 'd.sqlite')!r})
store.save_list(CachedList(np.arange(1, 101), np.linspace(1, 0, 100).astype('float32'), 'L', 'm', 0.0, 1e9))
rt = DeviceRuntime('d', store, rr, None, make_policy('budgeted', seed=0),
                   RuntimeConfig(adapt=True, learn_alpha=True, scale='zscore'))
for n, item in enumerate([5, 17, 40]):
    rec = rt.record(item, float(n))
assert rec.items.size == 10 and 5 not in rec.items.tolist()
assert rt.adapter is not None and rt.adapter.updates >= 1
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", sys.prefix)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(venv)]
