"""The system: one configuration that the runtime, the harness, the simulator and each release
read; every baseline a named override of it; bad settings named by their key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest

from dcrec.shared.system import (
    OVERRIDES,
    SYSTEM,
    System,
    SystemConfigError,
    load_system,
    parse_system,
    resolve,
)


def test_the_system_round_trips_through_toml_and_every_override_is_valid(tmp_path: Path) -> None:
    assert parse_system(SYSTEM.to_toml()) == SYSTEM
    assert load_system(SYSTEM.save(tmp_path / "system.toml")) == SYSTEM
    for name, change in OVERRIDES.items():
        variant = SYSTEM.override(name)
        assert variant.name == f"system+{name}"
        for key, value in change.items():
            section, _, field = key.partition(".")
            assert getattr(getattr(variant, section), field) == value
        assert parse_system(variant.to_toml()) == variant
    # the named baselines the tables use
    assert SYSTEM.override("no-index").cloud.neighbours == 0
    assert not SYSTEM.override("no-index").device.neighbours
    assert SYSTEM.override("cooccurrence").cloud.backend == "cooccurrence"
    assert SYSTEM.override("never", "no-index").name == "system+never+no-index"


def test_a_partial_file_keeps_the_system_defaults() -> None:
    got = parse_system('[policy]\ntarget_ratio = 0.1\n[device]\nalpha = 1\n')
    assert got.policy.target_ratio == 0.1 and isinstance(got.device.alpha, float) and got.device.alpha == 1.0
    assert got.cloud == SYSTEM.cloud and got.device.measure == SYSTEM.device.measure


@pytest.mark.parametrize("text, problems", [
    ("[device]\nfoo = 1\n", ["device.foo: unknown key"]),
    ("[devise]\nalpha = 0.5\n", ["devise: unknown key"]),
    ('[policy]\ntarget_ratio = "5"\n', ["policy.target_ratio: must be a number, got '5'"]),
    ("[device]\nneighbours = 1\n", ["device.neighbours: must be true or false, got 1"]),
    ("[device]\ncandidates = 1.5\n", ["device.candidates: must be an integer, got 1.5"]),
    ("[device]\nalpha = nan\n", ["device.alpha: must be a finite number"]),
    ('[device]\nmeasure = "entropy"\n', ["device.measure: must be one of footrule"]),
    ('[policy]\nname = "sometimes"\n', ["policy.name: unknown request policy 'sometimes'"]),
    ("[device]\nalpha = 2.0\n[policy]\ntarget_ratio = 0.0\n[cloud]\nneighbours = -1\n",
     ["cloud.neighbours: must be >= 0", "device.alpha: must be in [0, 1]",
      "policy.target_ratio: must be in (0, 1]"]),
    ("format = 2\n", ["format: version 2"]),
    ("[device\n", ["not valid TOML"]),
])
def test_bad_settings_are_named_by_their_key_all_at_once(text: str, problems: list[str]) -> None:
    with pytest.raises(SystemConfigError) as e:
        parse_system(text, "mine.toml")
    assert str(e.value).startswith("mine.toml: ")
    assert len(e.value.problems) == len(problems)
    for want, got in zip(problems, sorted(e.value.problems), strict=True):
        assert want in got, (want, got)


def test_unknown_override_and_unknown_value_keys_are_named() -> None:
    with pytest.raises(SystemConfigError, match="unknown override 'fast'"):
        SYSTEM.override("fast")
    with pytest.raises(SystemConfigError, match="policy.ratio: unknown key"):
        SYSTEM.with_values({"policy.ratio": 0.1})
    assert resolve(values={"device.alpha": 0.7}).device.alpha == 0.7


def test_runtime_harness_and_simulator_resolve_the_same_settings(device_model_dir: Path, tmp_path: Path) -> None:
    """The one definition: what each part runs when nobody configures it."""
    from dcrec.cloud.models.backends import DEFAULT_BACKEND
    from dcrec.device.policy import LearnedPolicy
    from dcrec.device.reranker import OnnxReranker
    from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
    from dcrec.device.store import DeviceStore
    from dcrec.shared.cli import build_parser
    from dcrec.simulator.bench.quality import QualityConfig
    from dcrec.simulator.fleet import _policy
    from dcrec.simulator.replay import ReplayConfig
    from dcrec.simulator.scenario import load_scenario

    s = SYSTEM
    # the device: a runtime built without a config or a policy runs the system
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50)
    rt = DeviceRuntime("d", DeviceStore(tmp_path / "d.sqlite"), rr, None)
    assert rt.config == s.device == RuntimeConfig()
    assert isinstance(rt.policy, LearnedPolicy) and rt.policy.target_ratio == s.policy.target_ratio
    assert rt.policy.capacity == s.policy.capacity
    # the cloud's default backend
    assert DEFAULT_BACKEND == s.cloud.backend
    # the harness: `dcrec bench quality` with no flag, and its config's own defaults
    want = {"cloud_backend": s.cloud.backend, "candidates": s.device.candidates,
            "measure": s.device.measure, "measure_top": s.device.measure_top,
            "device_candidates": s.device.device_candidates,
            "neighbours": s.cloud.neighbours if s.device.neighbours else 0,
            "learned": s.cloud.request_model, "system_ratio": s.policy.target_ratio}
    ns = build_parser().parse_args(["bench", "quality"])
    for cfg in (QualityConfig(), QualityConfig.of_system(s)):
        assert {k: getattr(cfg, k) for k in want} == want
    assert ns.seeds == 3 and all(getattr(ns, k, None) is None for k in
                                 ("cloud_backend", "measure", "measure_top", "candidates",
                                  "device_candidates", "neighbours"))
    # an override reaches the harness as its named change
    no_index = QualityConfig.of_system(s.override("no-index", "cooccurrence"))
    assert no_index.neighbours == 0 and no_index.cloud_backend == "cooccurrence"
    # the simulator: the headline scenario runs the system beside never and always
    sc = load_scenario("steady")
    assert sc.policies == ("never", "system", "always") and sc.runtime == s.device
    assert ReplayConfig(workdir=tmp_path).runtime == s.device and ReplayConfig(workdir=tmp_path).policy == "system"
    fleet_policy = _policy("system", sc.threshold, 1, rr)
    assert isinstance(fleet_policy, LearnedPolicy) and fleet_policy.target_ratio == s.policy.target_ratio
    assert _policy("random", sc.threshold, 1, rr).target_ratio == s.policy.target_ratio


def _release(onnx: bytes, config: dict[str, object], sequence: int):  # type: ignore[no-untyped-def]
    from dcrec.shared.contract import DeviceModel, manifest_bytes

    sha = hashlib.sha256(onnx).hexdigest()
    return DeviceModel(f"m{sequence}", onnx, sha, config, sequence,
                       manifest_bytes(f"m{sequence}", sequence, sha, config))


def test_a_device_runs_the_system_its_release_was_published_with(
        tmp_path: Path, device_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dcrec.cloud.releases.registry import ModelRegistry, RegistryError, ReleaseRefused
    from dcrec.device.policy import BudgetedPolicy, LearnedPolicy
    from dcrec.device.runtime import DeviceRuntime
    from dcrec.device.store import DeviceStore
    from dcrec.device.updates import install, load_installed

    config = json.loads((device_model_dir / "model.json").read_text())
    registry = ModelRegistry(tmp_path / "reg")
    # every release carries a system: the built-in one unless the cloud names another
    registry.publish(device_model_dir / "model.onnx", config, "v1")
    served = registry.current()
    assert served is not None and parse_system(served.config["system"]) == SYSTEM
    mine = dataclasses.replace(SYSTEM.override("budgeted").with_values(
        {"policy.target_ratio": 0.1, "device.measure": "rbo"}), name="mine")
    path = mine.save(tmp_path / "mine.toml")
    registry.publish(device_model_dir / "model.onnx", config, "v2", system=path)
    rr = install(registry.current(), tmp_path / "model")  # type: ignore[arg-type]
    assert rr.system == mine
    # a simulated fleet runs the release's device settings, with what its scenario sets on top
    from dcrec.simulator.fleet_run import runtime_settings
    from dcrec.simulator.scenario import parse_scenario

    assert runtime_settings(parse_scenario({}), rr) == mine.device
    assert runtime_settings(parse_scenario({"runtime": {"alpha": 0.8}}), rr) == \
        dataclasses.replace(mine.device, alpha=0.8)
    assert runtime_settings(parse_scenario({}), None) == SYSTEM.device
    rt = DeviceRuntime("d", DeviceStore(tmp_path / "d.sqlite"), rr, None)
    assert rt.config == mine.device and rt.config.measure == "rbo"
    assert isinstance(rt.policy, BudgetedPolicy) and not isinstance(rt.policy, LearnedPolicy)
    assert rt.policy.target_ratio == 0.1
    again = load_installed(tmp_path / "model")  # after a restart
    assert again is not None and again.system == mine
    # tampered on disk after publishing: the live release is refused
    cfg_file = tmp_path / "reg" / "models" / "v2" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["system"] = cfg["system"].replace("0.1", "1.0")
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ReleaseRefused, match="manifest"):
        ModelRegistry(tmp_path / "reg").current()
    # a signed system this device cannot read: the release serves, the device runs the built-in one
    onnx = (device_model_dir / "model.onnx").read_bytes()
    with caplog.at_level(logging.WARNING, logger="dcrec.device.updates"):
        rr = install(_release(onnx, {**config, "system": "format = 9\n"}, 7), tmp_path / "m2")
    assert rr.system is None
    assert any("format: version 9" in r.getMessage() for r in caplog.records)
    assert DeviceRuntime("e", DeviceStore(tmp_path / "e.sqlite"), rr, None).config == SYSTEM.device
    # the registry refuses to publish settings that are not a system, naming the key
    (tmp_path / "bad.toml").write_text("[policy]\nname = \"sometimes\"\n")
    with pytest.raises(RegistryError, match="policy.name: unknown request policy"):
        registry.publish(device_model_dir / "model.onnx", config, "v3", system=tmp_path / "bad.toml")
    assert registry.current_version() == "v2"  # nothing published


def test_system_commands_print_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dcrec.shared.cli import main

    assert main(["system", "show", "--override", "no-index", "--set", "policy.target_ratio=0.1"]) == 0
    shown = parse_system(capsys.readouterr().out)
    assert shown.cloud.neighbours == 0 and shown.policy.target_ratio == 0.1
    (tmp_path / "bad.toml").write_text("[device]\nalpha = 2.0\nshow = 0\n")
    assert main(["system", "check", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "device.alpha: must be in [0, 1]" in err and "device.show: must be >= 1" in err
    assert main(["system", "check", str(SYSTEM.save(tmp_path / "ok.toml"))]) == 0
    assert "a valid system" in capsys.readouterr().out
    assert main(["system", "show", "--system", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_system_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SYSTEM.policy.name = "always"  # type: ignore[misc]
    assert System() == SYSTEM
