"""Scenario files: the built-in ones load, bad values are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcrec.simulator.scenario import SCENARIO_DIR, ScenarioError, load_scenario, parse_scenario


def test_builtin_scenarios_load() -> None:
    names = {p.stem for p in SCENARIO_DIR.glob("*.toml")}
    assert {"steady", "cloud-outage", "flash-crowd", "lossy-network"} <= names
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name and sc.policies and sc.source
    outage = load_scenario("cloud-outage")
    assert outage.faults[0].kind == "cloud_down" and outage.faults[0].duration_s == 30.0
    assert outage.checks.max_recovery_ratio == 2.0 and outage.workload.kind == "closed_loop"
    lossy = load_scenario("lossy-network")
    assert lossy.network is not None and lossy.network.loss > 0
    assert load_scenario("flash-crowd").surges[0].join_fraction == 0.5


def test_overrides_and_paths(tmp_path: Path) -> None:
    sc = load_scenario("cloud-outage", ["workload.devices=50", "faults.0.at_s=20", "fleet.clock=wall",
                                        "runtime.alpha=0.3"])
    assert sc.workload.devices == 50 and sc.faults[0].at_s == 20.0 and sc.fleet.clock == "wall"
    assert sc.runtime.alpha == 0.3
    p = tmp_path / "mine.toml"
    p.write_text('name = "mine"\npolicies = ["never"]\n[workload]\nmax_users = 3\n')
    mine = load_scenario(str(p))
    assert mine.name == "mine" and mine.policies == ("never",) and mine.workload.max_users == 3


@pytest.mark.parametrize("raw, message", [
    ({"workload": {"devices": 10, "colour": 1}}, "colour"),
    ({"fleet": {"concurrency": "many"}}, "fleet.concurrency must be a number"),
    ({"fleet": {"recovery_spread": 1}}, "true or false"),
    ({"workload": {"kind": "closed_loop"}}, "duration_s"),
    ({"network": {"loss": 2.0}}, "loss"),
    ({"faults": [{"kind": "meteor", "at_s": 1, "duration_s": 1}]}, "meteor"),
    ({"runtime": {"alpha": 3.0}}, "alpha"),
    ({"bogus": {"x": 1}}, "bogus"),
])
def test_bad_values_are_refused(raw: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(raw)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ScenarioError, match="steady"):
        load_scenario("no-such-scenario")
