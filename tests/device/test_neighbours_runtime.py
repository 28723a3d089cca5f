"""The neighbour index on the device: local lists between requests, and delivery with the model.

The runtime must rank what the harness (``dcrec.simulator.bench.quality``) measures;
the index travels in the model release over a real gRPC server and is
verified like the model itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.models.neighbours import build
from dcrec.cloud.releases.registry import ModelRegistry, RegistryError
from dcrec.cloud.serving.server import build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import CloudClient
from dcrec.device.fusion import fuse
from dcrec.device.policy import NeverPolicy
from dcrec.device.reranker import OnnxReranker
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.store import CachedList, DeviceStore
from dcrec.device.updates import ModelRejected, ModelUpdater, install, load_installed, verify
from dcrec.shared.contract import DeviceModel, manifest_bytes
from dcrec.shared.neighbours import NeighbourIndex
from dcrec.simulator.bench.quality import add_device_candidates, blend_with_local, local_lists

N_ITEMS = 300


class CatalogueReranker:
    """Scores without ties that depend on the item and the whole history; knows its catalogue."""

    version = "cat"

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.score_catalogue(history)[np.asarray(candidates, dtype=np.int64)]

    def score_catalogue(self, history: np.ndarray) -> np.ndarray:
        h = float(np.asarray(history, dtype=np.int64).sum() % 97)
        ids = np.arange(N_ITEMS + 1, dtype=np.float64)
        out = (np.sin(ids * 0.37 + h) + ids * 1e-6).astype(np.float32)
        out[0] = -np.inf
        return out


def cached_list(rng: np.random.Generator, list_id: str, n: int = 40) -> CachedList:
    items = rng.choice(np.arange(1, N_ITEMS + 1), n, replace=False).astype(np.int64)
    scores = np.round(np.sort(rng.normal(size=n))[::-1], 1).astype(np.float32)  # with ties
    return CachedList(items, scores, list_id, "m", 0.0, 1e9)


def random_index(seed: int = 3, k: int = 12) -> NeighbourIndex:
    rng = np.random.default_rng(seed)
    items = np.zeros((N_ITEMS + 1, k), dtype=np.int64)
    for i in range(1, N_ITEMS + 1):
        items[i] = rng.choice(np.delete(np.arange(1, N_ITEMS + 1), i - 1), k, replace=False)
    scores = np.sort(rng.random((N_ITEMS + 1, k)), axis=1)[:, ::-1]
    return NeighbourIndex.from_lists(items, scores, "c-test")


def harness_order(rt: DeviceRuntime, index: NeighbourIndex, weight: float, k: int) -> list[int]:
    """The harness's fused order for the runtime's state: the unseen cached list blended with
    the local list, the device's top k beside it, fused at the runtime's alpha."""
    c, rr = rt.cached, rt.reranker
    assert c is not None and isinstance(rr, CatalogueReranker)
    seen = rt.store.seen()
    keep = np.array([int(i) not in seen for i in c.items], dtype=bool)
    history = rt.store.recent(rt.config.history_window)
    li, lsc = local_lists(index, [history], rt.config.candidates)
    items, by_w = blend_with_local(c.items[keep][None, :], c.scores[keep][None, :], li, lsc, (weight,))
    cloud = by_w[weight]
    live = items[0] > 0
    items, cloud = items[:, live], cloud[:, live]
    every = rr.score_catalogue(history).astype(np.float64)
    every[list(seen)] = -np.inf
    top = np.argsort(-every, kind="stable")[:k][None, :]
    wide_items, wide_cloud, wide_srm = add_device_candidates(
        items, cloud, rr.score(history, items[0])[None, :], top, rr.score(history, top[0])[None, :])
    f = fuse(wide_cloud[0], wide_srm[0], rt.alpha).astype(np.float64)
    return [int(i) for i in wide_items[0][np.argsort(-f, kind="stable")] if i > 0]


@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_runtime_ranks_what_the_harness_ranks(tmp_path: Path, weight: float) -> None:
    rng = np.random.default_rng(11)
    index = random_index()
    store = DeviceStore(tmp_path / "d.sqlite")
    store.save_list(cached_list(rng, "L0"))
    cfg = RuntimeConfig(alpha=0.0, device_candidates=3, measure="regret", neighbour_weight=weight,
                        candidates=30)
    rt = DeviceRuntime("d", store, CatalogueReranker(), None, NeverPolicy(), cfg, neighbours=index)
    for t in range(40):
        shown = rt.recommend()
        item = int(shown[rng.integers(shown.size)]) if rng.random() < 0.6 else int(rng.integers(1, N_ITEMS + 1))
        rt.record(item, float(t))
        assert rt._shown.tolist() == harness_order(rt, index, weight, 3)
        assert not np.isin(rt._shown, list(rt.store.seen())).any()


def test_a_fresh_list_is_ranked_alone_and_the_local_list_joins_after_the_next_event(
        tmp_path: Path, cloud_model_dir: Path, device_model_dir: Path) -> None:
    gen = load_generator(cloud_model_dir)
    config = json.loads((device_model_dir / "model.json").read_text())
    reranker = OnnxReranker.from_file(device_model_dir / "model.onnx", config["max_len"],
                                      n_items=config["n_items"])
    index = build(gen, neighbours=30)
    cs = build_server("127.0.0.1:0", CandidateService(gen)).start()
    try:
        client = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=10)
        rt = DeviceRuntime("d", DeviceStore(tmp_path / "d.sqlite"), reranker, client,
                           NeverPolicy(), RuntimeConfig(candidates=20), neighbours=index)
        rt.store.append_many(np.array([50, 51, 52]), np.array([0.0, 1.0, 2.0]))
        assert rt.refresh()
        assert rt.cached is not None
        fresh = set(rt.cached.items.tolist())
        assert set(rt._last.items.tolist()) == fresh  # type: ignore[union-attr]
        rt.record(173, 3.0)  # the history moves past the list: blended with the local list
        local, _ = index.local_list(rt.store.recent(50), 20, exclude=rt.store.seen())
        ranked = set(rt._last.items.tolist())  # type: ignore[union-attr]
        assert set(local.tolist()) <= ranked and (fresh - {173}) <= ranked
        assert ranked - fresh, "the local list adds items the cloud did not list"
        assert rt.refresh() and set(rt._last.items.tolist()) == set(rt.cached.items.tolist())  # type: ignore[union-attr]
        client.close()
    finally:
        cs.server.stop(0)


def test_without_any_cloud_list_the_device_still_recommends(tmp_path: Path) -> None:
    index = random_index()
    rt = DeviceRuntime("d", DeviceStore(tmp_path / "d.sqlite"), CatalogueReranker(), None,
                       NeverPolicy(), RuntimeConfig(alpha=1.0), neighbours=index)
    rec = rt.record(5, 0.0)
    local, _ = index.local_list(np.array([5]), 100, exclude={5})
    assert rec.items.tolist() == local[:10].tolist()  # alpha 1: the local list's own order
    assert rt._policy_input(0.0).has_list is False  # a request is still due
    off = DeviceRuntime("o", DeviceStore(tmp_path / "o.sqlite"), CatalogueReranker(), None,
                        NeverPolicy(), RuntimeConfig(neighbours=False), neighbours=index)
    assert off.record(5, 0.0).items.size == 0 and off.neighbour_index() is None
    with pytest.raises(ValueError, match="neighbour_weight"):
        RuntimeConfig(neighbour_weight=2.0).validate()


# --- delivery with the model release ------------------------------------------------------------
def _release(onnx: bytes, config: dict[str, object], sequence: int, neighbours: bytes) -> DeviceModel:
    sha = hashlib.sha256(onnx).hexdigest()
    return DeviceModel(f"m{sequence}", onnx, sha, config, sequence,
                       manifest_bytes(f"m{sequence}", sequence, sha, config), neighbours=neighbours)


def test_the_index_travels_with_the_model_and_is_verified(tmp_path: Path, cloud_model_dir: Path,
                                                         device_model_dir: Path) -> None:
    gen = load_generator(cloud_model_dir)
    index_path = tmp_path / "n.npz"
    sha = build(gen, neighbours=25).save(index_path)
    config = json.loads((device_model_dir / "model.json").read_text())
    registry = ModelRegistry(tmp_path / "reg")
    registry.publish(device_model_dir / "model.onnx", config, "v1", neighbours=index_path)
    assert registry.current().config["neighbours_sha256"] == sha  # type: ignore[union-attr]
    cs = build_server("127.0.0.1:0", CandidateService(gen), registry).start()
    try:
        client = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=10)
        rt = DeviceRuntime("d", DeviceStore(tmp_path / "d.sqlite"), None, client, NeverPolicy())
        assert ModelUpdater(rt, client, tmp_path / "model").poll()
        got = rt.neighbour_index()
        assert got is not None and got.neighbours == 25 and got.cloud_version == gen.version
        files = sorted(p.name for p in (tmp_path / "model").iterdir())
        assert any(f.startswith("neighbours-1-") for f in files)
        again = load_installed(tmp_path / "model")  # after a restart
        assert again is not None and again.neighbours is not None
        np.testing.assert_array_equal(again.neighbours.items, got.items)
        client.close()
    finally:
        cs.server.stop(0)
    onnx = (device_model_dir / "model.onnx").read_bytes()
    data = index_path.read_bytes()
    cfg = {**config, "neighbours_sha256": sha}
    with pytest.raises(ModelRejected, match="neighbour index sha256"):
        verify(_release(onnx, cfg, 5, data[:-1] + bytes([data[-1] ^ 1])))
    with pytest.raises(ModelRejected, match="does not announce"):
        verify(_release(onnx, config, 5, data))
    with pytest.raises(ModelRejected, match="announced"):
        verify(_release(onnx, cfg, 5, b""))
    with pytest.raises(ModelRejected, match="covers"):  # an index for another catalogue
        install(_release(onnx, {**cfg, "n_items": config["n_items"] + 1}, 5, data), tmp_path / "model")
    # a damaged installed index: the model keeps serving, without local lists
    pointer = json.loads((tmp_path / "model" / "INSTALLED.json").read_text())
    (tmp_path / "model" / pointer["neighbours_file"]).write_bytes(b"broken")
    served = load_installed(tmp_path / "model")
    assert served is not None and served.neighbours is None
    with pytest.raises(RegistryError, match="not a neighbour index"):
        registry.publish(device_model_dir / "model.onnx", config, "v2", neighbours=tmp_path / "d.sqlite")


def test_a_runtime_with_an_index_of_its_own_prefers_it(tmp_path: Path) -> None:
    mine, shipped = random_index(1), random_index(2)
    rr = CatalogueReranker()
    rr.neighbours = shipped  # type: ignore[attr-defined]
    store = DeviceStore(tmp_path / "d.sqlite")
    store.save_list(CachedList(np.array([1, 2, 3]), np.array([3.0, 2.0, 1.0], np.float32), "L", "m", 0.0, 1e9))
    assert DeviceRuntime("d", store, rr, None, NeverPolicy(), neighbours=mine).neighbour_index() is mine
    assert DeviceRuntime("e", DeviceStore(tmp_path / "e.sqlite"), rr, None, NeverPolicy()).neighbour_index() is shipped


@pytest.mark.parametrize("measure", ["rbo", "footrule"])
def test_order_measures_still_compare_with_the_clouds_own_list(tmp_path: Path, measure: str) -> None:
    """The index changes what is shown, not the disagreement a fixed threshold was set on."""
    rng = np.random.default_rng(4)
    c = cached_list(rng, "L0")
    runtimes = []
    for name, index in (("with", random_index()), ("without", None)):
        store = DeviceStore(tmp_path / f"{name}.sqlite")
        store.save_list(c)
        runtimes.append(DeviceRuntime(name, store, CatalogueReranker(), None, NeverPolicy(),
                                      RuntimeConfig(measure=measure), neighbours=index))
    with_index, without = runtimes
    for t in range(25):
        item = int(rng.integers(1, N_ITEMS + 1))
        a, b = with_index.record(item, float(t)), without.record(item, float(t))
        assert a.disagreement == pytest.approx(b.disagreement)
        assert set(with_index._last.items.tolist()) > set(without._last.items.tolist())  # type: ignore[union-attr]
