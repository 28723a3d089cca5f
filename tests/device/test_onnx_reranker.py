"""The exported ONNX reranker matches torch, and the runtime loads it without torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dcrec.device.reranker import ModelLoadError, OnnxReranker


def test_onnx_matches_torch_within_1e4(device_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from dcrec.cloud.training.train import load_sasrec

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
from dcrec.device.runtime import DeviceRuntime
from dcrec.device.reranker import OnnxReranker
from dcrec.device.store import DeviceStore, CachedList
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


def _with_metadata(path: Path, meta: dict[str, str] | None) -> bytes:
    """The model at ``path`` with its metadata replaced by ``meta`` (None: removed)."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in (meta or {}).items():
        proto.metadata_props.add(key=key, value=value)
    return bytes(proto.SerializeToString())


def test_export_writes_the_model_facts_into_the_onnx_metadata(device_model_dir: Path) -> None:
    from importlib.metadata import version

    config = json.loads((device_model_dir / "model.json").read_text())
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", config["max_len"],
                                n_items=config["n_items"])
    assert rr.metadata == {"max_len": "50", "n_items": "1682", "padding_id": "0",
                           "arch": "sasrec", "dcrec_version": version("dcrec")}


@pytest.mark.parametrize(("max_len", "n_items", "match"), [
    (50, 1000, r"n_items mismatch: .*exported with n_items 1682, the release config says 1000"),
    (20, 1682, r"max_len mismatch: .*exported with max_len 50, the release config says 20"),
])
def test_a_config_that_contradicts_the_metadata_is_refused(device_model_dir: Path, max_len: int,
                                                           n_items: int, match: str) -> None:
    # n_items 1000 < 1682 passes the probe of the last item: only the metadata catches the lie.
    with pytest.raises(ModelLoadError, match=match):
        OnnxReranker.from_file(device_model_dir / "model.onnx", max_len, n_items=n_items)


def test_metadata_with_other_padding_or_garbage_is_refused(device_model_dir: Path) -> None:
    path = device_model_dir / "model.onnx"
    with pytest.raises(ModelLoadError, match="padding_id mismatch: .* 1, the device pads with 0"):
        OnnxReranker(_with_metadata(path, {"padding_id": "1"}), 50, "x")
    with pytest.raises(ModelLoadError, match="n_items 'many', not an integer"):
        OnnxReranker(_with_metadata(path, {"n_items": "many"}), 50, "x", n_items=1682)


def test_a_model_without_metadata_still_loads(device_model_dir: Path) -> None:
    path = device_model_dir / "model.onnx"
    bare = OnnxReranker(_with_metadata(path, None), 50, "old", n_items=1000)
    assert bare.metadata == {}
    rng = np.random.default_rng(0)
    hist, cand = rng.integers(1, 1001, 20), rng.integers(1, 1001, 30)
    assert np.allclose(bare.score(hist, cand), OnnxReranker.from_file(path, 50).score(hist, cand))
