"""The device's own picks ranked beside the cloud's list (``RuntimeConfig.device_candidates``).

The runtime and the offline harness (``dcrec.simulator.bench.quality``) must rank the
same widened list the same way, or the harness measures something the device
never does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcrec.device.fusion import fuse
from dcrec.device.policy import NeverPolicy, PolicyInput
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.store import CachedList, DeviceStore
from dcrec.simulator.bench.quality import add_device_candidates

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


class ListOnlyReranker:
    """A model that cannot score its catalogue (no ``score_catalogue``)."""

    version = "list"

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return np.cos(np.asarray(candidates, dtype=np.float64)).astype(np.float32)


def cached_list(rng: np.random.Generator, list_id: str, n: int = 40) -> CachedList:
    items = rng.choice(np.arange(1, N_ITEMS + 1), n, replace=False).astype(np.int64)
    scores = np.round(np.sort(rng.normal(size=n))[::-1], 1).astype(np.float32)  # with ties
    return CachedList(items, scores, list_id, "m", 0.0, 1e9)


def runtime_on_list(tmp_path: Path, seed: int, n: int, reranker: object = None, **cfg: object
                    ) -> tuple[DeviceRuntime, CachedList]:
    """A runtime (no cloud client) whose store holds one random cached list of ``n`` items."""
    store = DeviceStore(tmp_path / "d.sqlite")
    c = cached_list(np.random.default_rng(seed), "L0", n=n)
    store.save_list(c)
    rt = DeviceRuntime("d", store, reranker or CatalogueReranker(), None, NeverPolicy(),  # type: ignore[arg-type]
                       RuntimeConfig(**cfg))  # type: ignore[arg-type]
    return rt, c


def harness_order(rt: DeviceRuntime, k: int) -> tuple[list[int], dict[int, float]]:
    """The harness's fused order of the same state (unseen cloud items plus the device's
    top k), and each item's fused score in float64."""
    c, rr = rt.cached, rt.reranker
    assert c is not None and isinstance(rr, CatalogueReranker)
    seen = rt.store.seen()
    keep = np.array([int(i) not in seen for i in c.items], dtype=bool)
    items, cloud = c.items[keep], c.scores[keep]
    history = rt.store.recent(rt.config.history_window)
    every = rr.score_catalogue(history).astype(np.float64)
    every[list(seen)] = -np.inf
    top = np.argsort(-every, kind="stable")[:k][None, :]
    wide_items, wide_cloud, wide_srm = add_device_candidates(
        items[None, :], cloud[None, :], rr.score(history, items)[None, :], top,
        rr.score(history, top[0])[None, :])
    f = fuse(wide_cloud[0], wide_srm[0], rt.alpha).astype(np.float64)
    order = np.argsort(-f, kind="stable")
    return ([int(i) for i in wide_items[0][order] if i > 0],
            {int(i): float(v) for i, v in zip(wide_items[0], f, strict=True) if i > 0})


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_runtime_ranks_what_the_harness_ranks(tmp_path: Path, alpha: float) -> None:
    rng = np.random.default_rng(5)
    store = DeviceStore(tmp_path / "d.sqlite")
    store.save_list(cached_list(rng, "L0"))
    cfg = RuntimeConfig(device_candidates=15, alpha=alpha, measure="regret")
    rt = DeviceRuntime("d", store, CatalogueReranker(), None, NeverPolicy(), cfg)
    for t in range(80):
        if t == 40:
            rt.cached = cached_list(rng, "L1")
        shown = rt.recommend()
        item = int(shown[rng.integers(shown.size)]) if rng.random() < 0.6 else int(rng.integers(1, N_ITEMS + 1))
        rec = rt.record(item, float(t))
        want, fused = harness_order(rt, 15)
        assert sorted(rt._shown.tolist()) == sorted(want)
        if alpha in (0.0, 1.0):
            assert rt._shown.tolist() == want
            assert rec.items.tolist() == want[:10]
        else:  # the same order up to float32 rounding of near-ties (the lists' widths differ)
            keys = np.array([fused[int(i)] for i in rt._shown])
            assert (np.diff(keys) <= 1e-6).all()
        assert not np.isin(rt._shown, list(rt.store.seen())).any()


def test_the_device_top_is_always_a_candidate(tmp_path: Path) -> None:
    """alpha 0 (the device's order): what is shown is the device model's own top 10 unseen."""
    rng = np.random.default_rng(6)
    store = DeviceStore(tmp_path / "d.sqlite")
    store.append_many(np.array([7, 9]), np.array([0.0, 1.0]))
    store.save_list(cached_list(rng, "L0", n=30))
    rr = CatalogueReranker()
    rt = DeviceRuntime("d", store, rr, None, NeverPolicy(), RuntimeConfig(device_candidates=10, alpha=0.0))
    rec = rt.record(11, 2.0)
    every = rr.score_catalogue(rt.store.recent(50)).astype(np.float64)
    every[[7, 9, 11]] = -np.inf
    assert rec.items.tolist() == np.argsort(-every, kind="stable")[:10].tolist()
    # Without the option the device can only reorder the cloud's list.
    plain = DeviceRuntime("p", DeviceStore(tmp_path / "p.sqlite"), rr, None, NeverPolicy(),
                          RuntimeConfig(alpha=0.0))
    plain.cached = rt.cached
    plain.store.append_many(np.array([7, 9, 11]), np.array([0.0, 1.0, 2.0]))
    assert np.isin(plain.record(11, 3.0).items, rt.cached.items).all()  # type: ignore[union-attr]


def test_alpha_one_keeps_the_cloud_list_on_top(tmp_path: Path) -> None:
    rt, c = runtime_on_list(tmp_path, 7, 12, device_candidates=8, alpha=1.0)
    rt.record(int(c.items[0]), 1.0)
    live = [int(i) for i in c.items[1:]]
    assert sorted(rt._shown[: len(live)].tolist()) == sorted(live)  # the cloud's items first
    assert len(rt._shown) > len(live)  # then the device's picks


def test_remaining_counts_only_the_clouds_candidates(tmp_path: Path) -> None:
    """The "list mostly consumed" trigger must still fire though the device adds items."""
    rt, c = runtime_on_list(tmp_path, 8, 10, device_candidates=20)
    for t, item in enumerate(c.items[:9]):
        rt.record(int(item), float(t))
    state: PolicyInput = rt._policy_input(10.0)
    assert state.remaining == 1 and state.total == 10
    assert rt._shown.size > 1


def test_a_model_without_its_catalogue_ranks_the_list_only(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    rt, c = runtime_on_list(tmp_path, 9, 20, ListOnlyReranker(), device_candidates=10)
    rec = rt.record(int(c.items[0]), 1.0)
    assert rec.items.size == 10 and np.isin(rt._shown, c.items).all()
    assert "device_candidates" in caplog.text


def test_bad_device_candidates_are_named() -> None:
    with pytest.raises(ValueError, match="device_candidates must be >= 0"):
        RuntimeConfig(device_candidates=-1).validate()


def test_add_device_candidates_pads_picks_already_listed() -> None:
    items = np.array([[4, 5, 6, 0]])
    cloud = np.array([[3.0, 2.0, 1.0, -np.inf]], dtype=np.float32)
    srm = np.array([[0.1, 0.2, 0.3, -np.inf]], dtype=np.float32)
    extra = np.array([[9, 5, 8]])
    extra_srm = np.array([[0.9, 0.2, 0.8]], dtype=np.float32)
    wi, wc, ws = add_device_candidates(items, cloud, srm, extra, extra_srm)
    assert wi.tolist() == [[4, 5, 6, 0, 9, 0, 8]]
    assert wc[0, 4] == wc[0, 6] == 0.0  # just below the cloud's worst listed score (1.0)
    assert wc[0, 5] == -np.inf and ws[0, 5] == -np.inf
    assert ws[0, 4] == pytest.approx(0.9) and ws[0, 6] == pytest.approx(0.8)
