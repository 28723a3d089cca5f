"""The request-value model: features, fitting, the learned policy, and delivery in the release.

The features are computed by one function for the harness and the runtime; the runtime's
prediction must be the model applied to the features the cloud's replay reads; the model
rides in the signed release config, and a device without a usable one falls back to the
budgeted policy and logs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.releases.registry import ModelRegistry, RegistryError, ReleaseRefused
from dcrec.cloud.training.request_value import fit_request_model, pick_gain
from dcrec.device.policy import BudgetedPolicy, LearnedPolicy, PolicyInput, make_policy
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.store import CachedList, DeviceStore
from dcrec.device.updates import install, load_installed
from dcrec.shared.agreement import expected_regret, softmax, uncovered_mass
from dcrec.shared.contract import DeviceModel, Reason, manifest_bytes
from dcrec.shared.request_value import (
    FEATURES,
    RequestModelError,
    RequestValueModel,
    situation_features,
)
from dcrec.simulator.bench.request_value import paired_interval, qini

N_ITEMS = 300


class CatalogueReranker:
    """Scores without ties that depend on the item and the whole history; knows its catalogue."""

    version = "cat"
    request_model = None

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.score_catalogue(history)[np.asarray(candidates, dtype=np.int64)]

    def score_catalogue(self, history: np.ndarray) -> np.ndarray:
        h = float(np.asarray(history, dtype=np.int64).sum() % 97)
        ids = np.arange(N_ITEMS + 1, dtype=np.float64)
        out = (3 * np.sin(ids * 0.37 + h) + ids * 1e-6).astype(np.float32)
        out[0] = -np.inf
        return out


def planted_model(rng: np.random.Generator, hidden: int = 4) -> RequestValueModel:
    f = len(FEATURES)
    return RequestValueModel(rng.normal(size=f), rng.random(f) + 0.5, rng.normal(size=(f, hidden)),
                             rng.normal(size=hidden), rng.normal(size=hidden), 0.1)


def state(value: float | None, disagreement: float = 0.5) -> PolicyInput:
    return PolicyInput(now=0.0, has_list=True, list_age_s=0.0, ttl_s=1e9, remaining=50, total=50,
                       disagreement=disagreement, events_since_request=1, value=value)


def test_features_agree_with_the_measures_they_name() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=N_ITEMS + 1) * 2
    scores[0] = -np.inf
    scores[[5, 6]] = -np.inf  # consumed
    live = np.array([10, 11, 12, 13, 40], dtype=np.int64)
    shown = np.array([12, 10, 99, 11], dtype=np.int64)
    sent = np.array([10, 11, 12, 13, 40, 5], dtype=np.int64)
    x = situation_features(scores, shown, live, np.arange(5.0)[::-1], rng.normal(size=5), sent,
                           np.array([5, 7]), 9, np.array([40, 41, 42, 43]), temperature=2.0)
    f = dict(zip(FEATURES, x, strict=True))
    p = softmax(scores, 2.0)
    assert f["regret"] == pytest.approx(expected_regret(p, shown, 10))
    assert f["uncovered"] == pytest.approx(uncovered_mass(p, live))
    assert f["top1"] == pytest.approx(p.max())
    assert f["top10"] == pytest.approx(np.sort(p)[-10:].sum())
    assert 0.0 < f["entropy"] < 1.0
    assert f["since_hits"] == 0.5  # item 5 was in the list as sent, 7 was not
    assert f["local_overlap"] == 0.25  # of the local list only 40 is in the cached list
    assert f["history"] == pytest.approx(np.log1p(9))
    assert 0.0 <= f["rbo"] <= 1.0
    # the device and the cloud agree: no order disagreement
    same = situation_features(scores, shown, live, np.arange(5.0), np.arange(5.0), sent,
                              np.zeros(0, np.int64), 9, None)
    assert same[FEATURES.index("rbo")] == pytest.approx(0.0)
    assert same[FEATURES.index("since_hits")] == 1.0 and same[FEATURES.index("local_overlap")] == 0.0


def test_the_model_round_trips_and_bad_models_are_named() -> None:
    model = planted_model(np.random.default_rng(1))
    x = np.random.default_rng(2).normal(size=(7, len(FEATURES)))
    again = RequestValueModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    good = model.to_dict()
    for bad, match in (({**good, "features": ["regret"]}, "features"),
                       ({**good, "format": 99}, "format"),
                       ({**good, "w2": [1.0]}, "shapes"),
                       ({**good, "std": [0.0] * len(FEATURES)}, "std"),
                       ({k: v for k, v in good.items() if k != "b1"}, "missing"),
                       ([1, 2], "object")):
        with pytest.raises(RequestModelError, match=match):
            RequestValueModel.from_dict(bad)


def test_fitting_finds_a_planted_gain() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6000, len(FEATURES)))
    # a fresh list helps when the device is confident and disagrees: a rare, noisy gain
    p = 1 / (1 + np.exp(-(2 * x[:, 0] + x[:, 4] - 4)))
    gain = (rng.random(6000) < p) * rng.choice([0.3, 1.0], 6000) - (rng.random(6000) < 0.05) * 0.3
    model = fit_request_model(x[:4000], gain[:4000], seed=0)
    pred = model.predict(x[4000:])
    assert qini(pred, gain[4000:]) > 0.5
    assert pick_gain(pred, gain[4000:]) > 3 * np.mean([r * gain[4000:].mean() for r in (0.05, 0.1)])
    assert qini(rng.random(2000), gain[4000:]) < 0.2
    with pytest.raises(ValueError, match="at least 50"):
        fit_request_model(x[:10], gain[:10])


def test_paired_interval_brackets_the_mean() -> None:
    d = np.random.default_rng(4).normal(0.01, 0.1, 5000)
    mean, lo, hi = paired_interval(d, seed=0)
    assert lo < mean < hi and lo > 0.0 and hi - lo < 0.02


def test_learned_policy_spends_its_budget_on_the_highest_values() -> None:
    policy = make_policy("learned", target_ratio=0.05, seed=0)
    assert isinstance(policy, LearnedPolicy)
    rng = np.random.default_rng(5)
    values = rng.random(20000)
    asked = np.array([policy.decide(state(float(v))) is not None for v in values])
    assert asked.mean() <= 0.05 + 2 / values.size
    assert asked.mean() > 0.04
    # most requests go to the top fifth (the trigger aims at boost x target = 20 % of events;
    # a token the bucket would waste goes to whatever event comes)
    assert np.mean(values[asked] > 0.8) > 0.6 and values[asked].mean() > 0.75
    reasons = {policy.decide(state(0.99)) for _ in range(3)}
    assert reasons <= {Reason.DISAGREEMENT, None}


def test_learned_policy_without_a_model_falls_back_to_budgeted_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    learned, budgeted = LearnedPolicy(target_ratio=0.1, seed=3), BudgetedPolicy(target_ratio=0.1, seed=3)
    rng = np.random.default_rng(6)
    with caplog.at_level(logging.WARNING, logger="dcrec.device.policy"):
        for d in rng.random(500):
            assert learned.decide(state(None, float(d))) == budgeted.decide(state(None, float(d)))
    warnings = [r for r in caplog.records if "falling back to the budgeted" in r.getMessage()]
    assert len(warnings) == 1  # once, not on every event


def test_learned_policy_state_survives_a_restart() -> None:
    a = LearnedPolicy(target_ratio=0.1, seed=1)
    for v in np.linspace(0, 1, 300):
        a.decide(state(float(v)))
    b = LearnedPolicy(target_ratio=0.1, seed=1)
    b.load_state(json.loads(json.dumps(a.state())))
    assert b.value_tracker.threshold == a.value_tracker.threshold
    assert b.bucket.tokens == a.bucket.tokens


def test_the_runtime_predicts_from_the_features_the_replay_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    model = planted_model(rng)
    store = DeviceStore(tmp_path / "d.sqlite")
    items = rng.choice(np.arange(1, N_ITEMS + 1), 40, replace=False).astype(np.int64)
    store.save_list(CachedList(items, np.sort(rng.normal(size=40))[::-1].astype(np.float32), "L", "m",
                               0.0, 1e9))
    seen_values = []

    class Spy(LearnedPolicy):
        def decide(self, s: PolicyInput) -> Reason | None:  # type: ignore[override]
            seen_values.append(s.value)
            return super().decide(s)

    rt = DeviceRuntime("d", store, CatalogueReranker(), None, Spy(target_ratio=0.1, seed=0),
                       RuntimeConfig(candidates=40, device_candidates=3), request_model=model)
    for t in range(25):
        shown = rt.recommend()
        rt.record(int(shown[0]) if t % 3 else int(rng.integers(1, N_ITEMS + 1)), float(t))
        x = rt.request_features(model.temperature, model.show, model.top)
        assert x is not None
        assert seen_values[-1] == pytest.approx(float(model.predict(x[None, :])[0]), abs=1e-12)
    # without a model the runtime computes no value and the policy falls back
    rt2 = DeviceRuntime("e", DeviceStore(tmp_path / "e.sqlite"), CatalogueReranker(), None,
                        Spy(target_ratio=0.1, seed=0), RuntimeConfig(candidates=40))
    rt2.adopt(CachedList(items, np.arange(40.0, 0, -1).astype(np.float32), "L", "m", 0.0, 1e9))
    rt2.record(int(items[0]), 1.0)
    assert seen_values[-1] is None


def _release(onnx: bytes, config: dict[str, object], sequence: int) -> DeviceModel:
    sha = hashlib.sha256(onnx).hexdigest()
    return DeviceModel(f"m{sequence}", onnx, sha, config, sequence,
                       manifest_bytes(f"m{sequence}", sequence, sha, config))


def test_the_request_model_travels_in_the_signed_release(tmp_path: Path, device_model_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    model = planted_model(np.random.default_rng(8))
    path = tmp_path / "request.json"
    path.write_text(json.dumps(model.to_dict()))
    config = json.loads((device_model_dir / "model.json").read_text())
    registry = ModelRegistry(tmp_path / "reg")
    registry.publish(device_model_dir / "model.onnx", config, "v1", request_model=path)
    served = registry.current()
    assert served is not None and served.config["request_model"] == model.to_dict()
    rr = install(served, tmp_path / "model")
    x = np.random.default_rng(9).normal(size=(3, len(FEATURES)))
    assert rr.request_model is not None
    np.testing.assert_allclose(rr.request_model.predict(x), model.predict(x))
    again = load_installed(tmp_path / "model")  # after a restart
    assert again is not None and again.request_model is not None
    # tampered on disk after publishing: the live release is refused
    cfg_file = tmp_path / "reg" / "models" / "v1" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["request_model"]["b2"] = 5.0
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ReleaseRefused, match="manifest"):
        ModelRegistry(tmp_path / "reg").current()
    # a release whose request model this device cannot read still serves, without it
    onnx = (device_model_dir / "model.onnx").read_bytes()
    with caplog.at_level(logging.WARNING, logger="dcrec.device.updates"):
        rr = install(_release(onnx, {**config, "request_model": {"format": 99}}, 7), tmp_path / "m2")
    assert rr.request_model is None
    assert any("request model is unusable" in r.getMessage() for r in caplog.records)
    # the registry refuses to publish what is not a request model
    path.write_text(json.dumps({"format": 1}))
    with pytest.raises(RegistryError, match="not a request model"):
        registry.publish(device_model_dir / "model.onnx", config, "v2", request_model=path)


def test_the_cloud_trains_a_request_model_by_replaying_the_runtime(
        tmp_path: Path, device_model_dir: Path, cloud_model_dir: Path) -> None:
    from dcrec.cloud.models.backends import load_generator
    from dcrec.cloud.models.neighbours import build
    from dcrec.shared.cli import main as cli

    index = tmp_path / "n.npz"
    build(load_generator(cloud_model_dir), neighbours=20).save(index)
    out = tmp_path / "request.json"
    assert cli(["cloud", "request-model", "--dataset", "ml-100k", "--device-model", str(device_model_dir),
                "--neighbours", str(index), "--backend", "cooccurrence", "--users", "120",
                "--out", str(out)]) == 0
    model = RequestValueModel.from_dict(json.loads(out.read_text()))
    assert (tmp_path / "request-work" / "fold-cloud" / "backend.json").is_file()
    # the replayed rows are the runtime's: re-running reuses the fold cloud and gives the same model
    again = tmp_path / "again.json"
    assert cli(["cloud", "request-model", "--dataset", "ml-100k", "--device-model", str(device_model_dir),
                "--neighbours", str(index), "--backend", "cooccurrence", "--users", "120",
                "--workdir", str(tmp_path / "request-work"), "--out", str(again)]) == 0
    x = np.random.default_rng(0).normal(size=(5, len(FEATURES)))
    np.testing.assert_allclose(RequestValueModel.from_dict(json.loads(again.read_text())).predict(x),
                               model.predict(x))
    registry = tmp_path / "reg"
    assert cli(["cloud", "publish", "--registry", str(registry), "--model",
                str(device_model_dir / "model.onnx"), "--config", str(device_model_dir / "model.json"),
                "--neighbours", str(index), "--request-model", str(out)]) == 0
    served = ModelRegistry(registry).current()
    assert served is not None and "request_model" in served.config
    # a request model for another device model's features is refused with its name
    (tmp_path / "bad.json").write_text(json.dumps({**model.to_dict(), "features": ["x"]}))
    assert cli(["cloud", "publish", "--registry", str(registry), "--model",
                str(device_model_dir / "model.onnx"), "--config", str(device_model_dir / "model.json"),
                "--request-model", str(tmp_path / "bad.json"), "--version", "bad"]) != 0


def test_membership_by_mask_is_isin() -> None:
    from dcrec.shared.request_value import _member

    rng = np.random.default_rng(3)
    for _ in range(300):
        a = rng.integers(0, int(rng.integers(1, 50)), int(rng.integers(0, 30)))
        b = rng.integers(0, int(rng.integers(1, 50)), int(rng.integers(0, 30)))
        assert np.array_equal(_member(a, b), np.isin(a, b))
    neg = np.array([-1, 3, 5])
    assert np.array_equal(_member(neg, np.array([5, -1])), np.isin(neg, np.array([5, -1])))
