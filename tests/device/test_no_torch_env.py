"""The device runtime runs in a fresh environment holding only the device install: no torch at all.

``device_venv`` (tests/conftest.py) is a virtual environment with dcrec's wheel unpacked and
links to exactly the distributions its core requirements need, nothing of this environment's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_runtime_in_a_venv_without_torch(device_venv: Path, device_model_dir: Path,
                                         tmp_path: Path) -> None:
    code = f"""
import importlib.util, sys
assert importlib.util.find_spec("torch") is None, "torch is installed in this environment"
import numpy as np
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.reranker import OnnxReranker
from dcrec.device.store import CachedList, DeviceStore
from dcrec.device.policy import make_policy
rr = OnnxReranker.from_file({str(device_model_dir / 'model.onnx')!r}, 50)
store = DeviceStore({str(tmp_path / 'd.sqlite')!r})
store.save_list(CachedList(np.arange(1, 101), np.linspace(1, 0, 100).astype('float32'), 'L', 'm', 0.0, 1e9))
rt = DeviceRuntime('d', store, rr, None, make_policy('budgeted', seed=0),
                   RuntimeConfig(adapt=True, scale='zscore'))
for n, item in enumerate([5, 17, 40]):
    rec = rt.record(item, float(n))
assert rec.items.size == 10 and 5 not in rec.items.tolist()
assert rt.adapter is not None and rt.adapter.updates >= 1
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", sys.prefix)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    out = subprocess.run([str(device_venv), "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(device_venv.parents[1])]
