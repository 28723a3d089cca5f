"""The exported ONNX reranker matches torch, and the runtime loads it without torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.reranker import ModelLoadError, OnnxReranker


def test_onnx_matches_torch_within_1e4(device_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from device.training.train import load_sasrec

    model = load_sasrec(device_model_dir)
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", model.cfg.max_len)
    rng = np.random.default_rng(3)
    for hist_len, n_cand in [(1, 5), (20, 100), (50, 100), (80, 30)]:
        hist = rng.integers(1, 1683, hist_len)
        cand = rng.integers(1, 1683, n_cand)
        got = rr.score(hist, cand)
        h = torch.from_numpy(hist[-model.cfg.max_len:][None])
        with torch.no_grad():
            ref = model.score(h, torch.from_numpy(cand[None]))[0].numpy()
        assert np.abs(got - ref).max() < 1e-4
    batch_h = np.zeros((3, 50), dtype=np.int64)
    batch_h[:, -10:] = rng.integers(1, 1683, (3, 10))
    batch_c = rng.integers(1, 1683, (3, 40))
    batched = rr.score_batch(batch_h, batch_c)
    assert batched.shape == (3, 40)
    assert np.allclose(batched[1], rr.score(batch_h[1, -10:], batch_c[1]), atol=1e-5)


def test_garbage_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        OnnxReranker(b"not an onnx model", max_len=50, version="x")


def test_device_runtime_runs_without_torch(device_model_dir: Path, tmp_path: Path) -> None:
    """Import and run the device runtime in a child where importing torch fails."""
    code = f"""
import sys, importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not available on the device")
sys.meta_path.insert(0, NoTorch())
from device.runtime import DeviceRuntime
from device.reranker import OnnxReranker
from device.store import DeviceStore, CachedList
import numpy as np
rr = OnnxReranker.from_file({str(device_model_dir / 'model.onnx')!r}, 50)
store = DeviceStore({str(tmp_path / 'd.sqlite')!r})
store.save_list(CachedList(np.arange(1, 101), np.linspace(1, 0, 100).astype('float32'), 'L', 'm', 0.0, 1e9))
rt = DeviceRuntime('d', store, rr, None)
rec = rt.record(5, 1.0)
assert rec.items.size == 10 and 5 not in rec.items.tolist()
assert 'torch' not in sys.modules
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert json.loads((device_model_dir / "model.json").read_text())["max_len"] == 50
