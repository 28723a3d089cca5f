"""DeviceRuntime against a real in-process gRPC server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.server import create_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import Backoff, CloudClient
from dcrec.device.policy import AlwaysPolicy, DisagreementPolicy, NeverPolicy
from dcrec.device.reranker import OnnxReranker
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.store import DeviceStore
from dcrec.device.updates import load_installed, update
from dcrec.shared.contract import Reason


@pytest.fixture
def cloud(cloud_model_dir: Path, registry_dir: Path) -> Iterator[tuple[str, object]]:
    srv, port, _ = create_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                                 ModelRegistry(registry_dir))
    srv.start()
    yield f"127.0.0.1:{port}", srv
    srv.stop(0)


@pytest.fixture
def reranker(device_model_dir: Path) -> OnnxReranker:
    return OnnxReranker.from_file(device_model_dir / "model.onnx", 50)


def make(tmp_path: Path, address: str, reranker: OnnxReranker, policy, **cfg) -> DeviceRuntime:  # type: ignore[no-untyped-def]
    clock = [0.0]
    client = CloudClient(address, deadline_s=2.0, clock=lambda: clock[0])
    return DeviceRuntime("dev1", DeviceStore(tmp_path / "dev1.sqlite"), reranker, client, policy,
                         RuntimeConfig(**cfg), clock=lambda: clock[0])


def test_cold_start_then_rerank_every_event(tmp_path: Path, cloud, reranker) -> None:  # type: ignore[no-untyped-def]
    rt = make(tmp_path, cloud[0], reranker, NeverPolicy())
    first = rt.record(50, 1.0)
    assert first.request == Reason.COLD_START and first.request_ok
    assert first.items.size == 10 and 50 not in first.items
    list_id = rt.cached.list_id  # type: ignore[union-attr]
    consumed = [50]
    for n, i in enumerate([100, 181, 258]):
        consumed.append(i)
        shown = rt.record(i, 2.0 + n).items
        assert shown.size == 10 and not np.isin(shown, consumed).any()
    assert rt.cached.list_id == list_id  # type: ignore[union-attr] # never policy: no new list
    assert rt.requests == 1
    assert rt.store.event_count() == 4


def test_always_policy_requests_every_event(tmp_path: Path, cloud, reranker) -> None:  # type: ignore[no-untyped-def]
    rt = make(tmp_path, cloud[0], reranker, AlwaysPolicy())
    for n, i in enumerate([1, 2, 3, 4]):
        rec = rt.record(i, float(n))
        assert rec.request_ok
    assert rt.requests == 4
    log = rt.store.request_log()
    assert [r["reason"] for r in log] == ["cold_start", "periodic", "periodic", "periodic"]


def test_alpha_one_shows_the_cloud_order(tmp_path: Path, cloud, reranker) -> None:  # type: ignore[no-untyped-def]
    rt = make(tmp_path, cloud[0], reranker, NeverPolicy(), alpha=1.0)
    rec = rt.record(50, 1.0)
    assert rec.items.tolist() == rt.cached.items[:10].tolist()  # type: ignore[union-attr]
    rt0 = make(tmp_path / "b", cloud[0], reranker, NeverPolicy(), alpha=0.0)
    rec0 = rt0.record(50, 1.0)
    scores = reranker.score(np.array([50]), rt0.cached.items)  # type: ignore[union-attr]
    assert rec0.items.tolist() == rt0.cached.items[np.argsort(-scores, kind="stable")][:10].tolist()  # type: ignore[union-attr]


def test_unreachable_cloud_keeps_cache_and_backs_off(tmp_path: Path, cloud, reranker) -> None:  # type: ignore[no-untyped-def]
    address, srv = cloud
    rt = make(tmp_path, address, reranker, DisagreementPolicy(threshold=0.0))
    rt.record(50, 0.0)
    cached_id = rt.cached.list_id  # type: ignore[union-attr]
    srv.stop(0)
    sent_before = rt.requests
    for n in range(20):
        rec = rt.record(60 + n, 1.0)  # the clock does not move: back-off must hold
        assert rec.items.size == 10 and not rec.request_ok
    assert rt.cached.list_id == cached_id  # type: ignore[union-attr]
    assert rt.requests - sent_before == 1  # one failure, then backing off
    assert rt.store.event_count() == 21


def test_backoff_grows_and_resets() -> None:
    import random

    b = Backoff(base_s=1.0, max_s=8.0, rng=random.Random(0))
    waits = [b.failed(0.0) for _ in range(6)]
    assert all(0 <= w <= 8.0 for w in waits) and not b.allowed(0.0) or waits[-1] == 0
    b.succeeded()
    assert b.allowed(0.0) and b.failures == 0


def test_model_update_verifies_and_persists(tmp_path: Path, cloud) -> None:  # type: ignore[no-untyped-def]
    client = CloudClient(cloud[0], deadline_s=5.0)
    rr = update(client, "dev1", tmp_path / "model", None)
    assert rr is not None and rr.version == "v1"
    assert update(client, "dev1", tmp_path / "model", rr) is rr  # already newest
    again = load_installed(tmp_path / "model")
    assert again is not None and again.version == "v1"


def test_regret_measure_scores_the_whole_catalogue(tmp_path: Path, cloud, device_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from dcrec.shared.agreement import expected_regret, softmax

    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50, n_items=1682)
    rt = make(tmp_path, cloud[0], rr, NeverPolicy(), measure="regret")
    for i, item in enumerate([50, 100, 181, 258]):
        rec = rt.record(item, 1.0 + i)
    # By hand: the model's distribution over all 1,682 items, seen ones removed, against
    # the ten items on screen.
    scores = rr.score_catalogue(rt.store.recent(50)).astype(np.float64)
    assert scores.shape == (1683,) and scores[0] == -np.inf
    scores[[50, 100, 181, 258]] = -np.inf
    want = expected_regret(softmax(scores, 2.0), rec.items, 10)  # the default temperature
    assert 0.0 < rec.disagreement <= 1.0
    assert rec.disagreement == pytest.approx(want, rel=1e-5)


def test_uncovered_measure_is_the_mass_outside_the_cloud_list(tmp_path: Path, cloud, device_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from dcrec.shared.agreement import softmax, uncovered_mass

    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50, n_items=1682)
    rt = make(tmp_path, cloud[0], rr, NeverPolicy(), measure="uncovered", regret_temperature=4.0,
              device_candidates=10)
    for i, item in enumerate([50, 100, 181, 258]):
        rec = rt.record(item, 1.0 + i)
    scores = rr.score_catalogue(rt.store.recent(50)).astype(np.float64)
    scores[[50, 100, 181, 258]] = -np.inf
    cloud_left = [i for i in rt.cached.items.tolist() if i not in (50, 100, 181, 258)]  # type: ignore[union-attr]
    want = uncovered_mass(softmax(scores, 4.0), np.array(cloud_left))
    assert 0.0 < rec.disagreement < 1.0
    assert rec.disagreement == pytest.approx(want, rel=1e-5)
    # The device's own picks are ranked too, yet do not count as covered by the cloud.
    assert rt._shown.size > len(cloud_left)


def test_regret_needs_the_catalogue_size(tmp_path: Path, cloud, reranker, device_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # A model file knows its catalogue from its export metadata; an older export does not.
    assert reranker.n_items == 1682 and reranker.score_catalogue(np.array([1, 2])) is not None
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(device_model_dir / "model.onnx"))
    del proto.metadata_props[:]
    reranker = OnnxReranker(proto.SerializeToString(), 50, "old-export")
    assert reranker.n_items is None and reranker.score_catalogue(np.array([1, 2])) is None
    rt = make(tmp_path, cloud[0], reranker, NeverPolicy(), measure="regret")
    assert rt.record(50, 1.0).disagreement == 0.0  # never a trigger without N; the list still shows
    assert rt.record(100, 2.0).items.size == 10


def test_runtime_config_names_a_bad_measure_or_temperature() -> None:
    with pytest.raises(ValueError, match="unknown measure 'entropy'"):
        RuntimeConfig(measure="entropy").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="regret_temperature must be > 0"):
        RuntimeConfig(measure="regret", regret_temperature=0.0).validate()


def test_regret_reads_candidate_scores_from_the_catalogue_pass(tmp_path: Path, cloud, device_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """One model call per event: the candidates' scores come from the catalogue scores."""
    class Counting(OnnxReranker):
        calls = 0

        def score(self, history, candidates):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().score(history, candidates)

    rr = Counting.from_file(device_model_dir / "model.onnx", 50, n_items=1682)
    # (no user vector: it moves the candidates' scores off the plain catalogue pass)
    rt = make(tmp_path, cloud[0], rr, NeverPolicy(), measure="regret", adapt=False)
    first = rt.record(50, 1.0)
    rec = rt.record(100, 2.0)
    assert Counting.calls == 0 and first.items.size == rec.items.size == 10
    # The order shown is the one the candidates' own scores give.
    want = np.array(rr.score(rt.store.recent(50), rt._last.items))  # type: ignore[union-attr]
    assert np.array_equal(rt._last.device, want)  # type: ignore[union-attr]


def test_a_history_window_longer_than_the_store_keeps_is_refused(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "a.sqlite", history_cache=30)
    with pytest.raises(ValueError, match="history_window 50 is longer than the store's history_cache 30"):
        DeviceRuntime("a", store, None, None, config=RuntimeConfig(history_window=50))
    store.close()
    # open() sizes the store for the window it is asked to use.
    rt = DeviceRuntime.open(tmp_path / "b.sqlite", None, None, config=RuntimeConfig(history_window=300))
    for n in range(320):
        rt.store.append(n + 1, float(n))
    assert rt.store.recent(300).size == 300
    rt.close()
