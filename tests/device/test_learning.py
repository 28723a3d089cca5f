"""Per-device learning: the user vector, and its state across restarts."""

from pathlib import Path

import numpy as np
import pytest

from dcrec.device.adapt import UserAdapter
from dcrec.device.fusion import fuse, zscores
from dcrec.device.policy import make_policy
from dcrec.device.reranker import OnnxReranker
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.store import CachedList, DeviceStore


def test_zscore_fusion_keeps_margins() -> None:
    cloud = np.array([10.0, 0.2, 0.1, 0.0])  # the cloud is sure of item 0, unsure of the rest
    device = np.array([0.9, 1.0, 0.0, 0.1])  # the device barely prefers item 1 over item 0
    assert np.argmax(fuse(cloud, device, 0.4, "zscore")) == 0  # a confident cloud keeps its pick
    assert np.argmax(fuse(cloud, device, 0.4, "rank")) == 1  # ranks cannot see margins
    assert zscores(np.array([1.0, -np.inf, 3.0]))[1] == zscores(np.array([1.0, 1.0, 3.0]))[1]


def test_user_vector_follows_drifting_taste() -> None:
    """Two taste clusters; the user switches from A to B; the vector follows within a few choices."""
    rng = np.random.default_rng(1)
    dim = 16
    centre_a, centre_b = rng.normal(size=dim), rng.normal(size=dim)
    items = np.vstack([centre_a + 0.3 * rng.normal(size=(20, dim)),
                       centre_b + 0.3 * rng.normal(size=(20, dim))])
    in_b = np.r_[np.zeros(20, bool), np.ones(20, bool)]
    base = np.zeros(40)  # a model with no opinion
    ad = UserAdapter(dim, lr=0.3, decay=0.05)

    def mass_on_b() -> float:
        s = ad.adjust(base, items).astype(np.float64)
        p = np.exp(s - s.max())
        return float(p[in_b].sum() / p.sum())

    for _ in range(15):
        ad.update(base, items, items[rng.integers(0, 20)])
    assert mass_on_b() < 0.2
    for _ in range(15):
        ad.update(base, items, items[20 + rng.integers(0, 20)])
    assert mass_on_b() > 0.8
    assert np.linalg.norm(ad.u) <= ad.max_norm + 1e-9


def _runtime(path: Path, rr: OnnxReranker, **cfg: object) -> DeviceRuntime:
    store = DeviceStore(path)
    if store.load_list() is None:
        store.save_list(CachedList(np.arange(1, 201), np.linspace(1, 0, 200).astype("float32"),
                                   "L", "m", 0.0, 1e9))
    return DeviceRuntime("d", store, rr, None, make_policy("budgeted", seed=0),
                         RuntimeConfig(**cfg), clock=lambda: 0.0)  # type: ignore[arg-type]


@pytest.fixture
def reranker(device_model_dir: Path) -> OnnxReranker:
    return OnnxReranker.from_file(device_model_dir / "model.onnx", 50)


def test_runtime_learns_and_keeps_its_state(tmp_path: Path, reranker: OnnxReranker) -> None:
    assert reranker.has_embeddings
    rt = _runtime(tmp_path / "d.sqlite", reranker)  # the system adapts: no setting needed
    for n in range(12):
        shown = rt.recommend()
        rec = rt.record(int(shown[n % 3]), float(n))  # the user keeps taking shown items
        assert rec.items.size == 10
    assert rt.adapter is not None and rt.adapter.updates == 12
    assert np.linalg.norm(rt.adapter.u) > 0
    u, bucket = rt.adapter.u.copy(), rt.policy.state()  # type: ignore[attr-defined]
    rt.close()
    again = _runtime(tmp_path / "d.sqlite", reranker)
    assert again.adapter is not None and np.allclose(again.adapter.u, u)
    assert again.policy.state() == bucket  # type: ignore[attr-defined] # a restart does not refill the budget
    # An item from outside the list also teaches the user vector (its embedding comes from the model).
    again.record(1500, 20.0)
    assert again.adapter.updates == 13


def test_unsent_requests_cost_no_budget(tmp_path: Path, reranker: OnnxReranker) -> None:
    store = DeviceStore(tmp_path / "e.sqlite")
    store.save_list(CachedList(np.arange(1, 101), np.linspace(1, 0, 100).astype("float32"),
                               "L", "m", 0.0, 1.0))  # expires after one second
    rt = DeviceRuntime("e", store, reranker, None, make_policy("budgeted", target_ratio=0.5, seed=0),
                       clock=lambda: 0.0)
    for n in range(20):
        rec = rt.record(150 + n, 10.0 + n)
        assert not rec.request_ok
    assert rt.requests == 0
    assert rt.policy.bucket.granted == 0  # type: ignore[attr-defined] # every grant was refunded


def test_a_new_model_starts_a_new_user_vector(tmp_path: Path, device_model_dir: Path,
                                              reranker: OnnxReranker) -> None:
    rt = _runtime(tmp_path / "m.sqlite", reranker, adapt=True)
    for n in range(6):
        rt.record(int(rt.recommend()[0]), float(n))
    assert rt.adapter is not None and rt.adapter.updates == 6
    learnt = rt.adapter.u.copy()
    # Same width, another release: its embedding space is not the old one's.
    v2 = OnnxReranker.from_file(device_model_dir / "model.onnx", 50, version="v2")
    assert v2.version != reranker.version
    rt.reranker = v2  # what ModelUpdater.apply does between events
    rt.record(int(rt.recommend()[0]), 10.0)  # the list it chose from was scored by the old model
    assert rt.adapter.updates == 0 and not np.any(rt.adapter.u)
    rt.record(int(rt.recommend()[0]), 11.0)
    assert rt.adapter.updates == 1
    v2_u = rt.adapter.u.copy()
    rt.close()
    # A restart resumes the vector of the model it was learnt with, and only that one.
    again = _runtime(tmp_path / "m.sqlite", v2, adapt=True)
    again.recommend()
    assert again.adapter is not None and np.allclose(again.adapter.u, v2_u)
    again.close()
    old = _runtime(tmp_path / "m.sqlite", reranker, adapt=True)
    old.recommend()
    assert old.adapter is not None and old.adapter.updates == 0
    assert not np.allclose(learnt, 0.0)
