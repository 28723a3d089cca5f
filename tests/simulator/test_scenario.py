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
    sc = load_scenario("cloud-outage", ["workload.devices=50", "faults.0.at_s=90", "fleet.clock=wall",
                                        "runtime.alpha=0.3"])
    assert sc.workload.devices == 50 and sc.faults[0].at_s == 90.0 and sc.fleet.clock == "wall"
    assert sc.runtime.alpha == 0.3
    p = tmp_path / "mine.toml"
    p.write_text('name = "mine"\npolicies = ["never"]\n[workload]\nmax_users = 3\n')
    mine = load_scenario(str(p))
    assert mine.name == "mine" and mine.policies == ("never",) and mine.workload.max_users == 3


@pytest.mark.parametrize("raw, message", [
    ({"workload": {"devices": 10, "colour": 1}}, "colour"),
    ({"fleet": {"concurrency": "many"}}, "fleet.concurrency: must be an integer, got 'many'"),
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


def test_every_bad_value_is_reported_at_once_with_its_key_path() -> None:
    """Issue 21: bad values the old parser accepted, all named in one error, section first."""
    with pytest.raises(ScenarioError) as err:
        load_scenario("cloud-outage", ["workload.max_users=x", "checks.max_lost_events=-1",
                                       "fleet.bin_s=0", "faults.0.duration_s=nan", "seed=1.5"])
    problems = err.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "seed", "workload.max_users", "fleet.bin_s", "checks.max_lost_events", "faults.0.duration_s"]
    assert "workload.max_users: must be an integer, got 'x'" in problems
    assert "checks.max_lost_events: must be greater than or equal to 0, got -1" in problems
    assert "fleet.bin_s: must be greater than 0, got 0" in problems
    message = str(err.value)
    assert message.startswith("scenario cloud-outage: 5 invalid settings")
    assert all(p in message for p in problems)


@pytest.mark.parametrize("raw, message", [
    ({"colour": "red"}, "colour: unknown key (known: checks, cloud_fraction,"),
    ({"workload": {"colour": 1}}, "workload.colour: unknown key (known: devices, duration_s,"),
    ({"faults": [{"kind": "cloud_down", "at_s": 1, "duration_s": 1, "when": 2}]},
     "faults.0.when: unknown key (known: at_s, duration_s, kind)"),
    ({"fleet": {"bin_s": 5, "bin": 10}}, "fleet.bin: unknown key"),
    ({"faults": [{"kind": "cloud_down", "at_s": 1}]}, "faults.0.duration_s: required"),
    ({"faults": {"kind": "cloud_down"}}, "faults: must be an array of tables ([[faults]])"),
    ({"workload": 3}, "workload: must be a table ([workload]), got 3"),
    ({"policies": ["disagreement", "fastest"]}, "policies.1: must be 'system', 'disagreement', 'always'"),
    ({"policies": []}, "policies: must not be empty"),
    ({"fleet": {"k": 20}}, "fleet.k = 20 must be <= runtime.show = 10"),
])
def test_unknown_keys_and_contradictions_are_named(raw: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw)
    assert message in str(err.value)


def test_a_warmup_that_ends_after_the_first_fault_is_refused() -> None:
    """Issue 21: the recovery check would divide by the steady rate of an empty window (nan, inf)."""
    with pytest.raises(ScenarioError, match=r"workload.warmup_s = 200 must end before the first "
                                            r"fault, faults.0.at_s = 150"):
        load_scenario("cloud-outage", ["workload.warmup_s=200"])
    with pytest.raises(ScenarioError, match=r"no whole fleet.bin_s = 10 bin between "
                                            r"workload.warmup_s = 145 and faults.0.at_s = 150"):
        load_scenario("cloud-outage", ["workload.warmup_s=145"])
    with pytest.raises(ScenarioError, match=r"faults.0 ends at 340 s"):
        load_scenario("cloud-outage", ["faults.0.at_s=310"])
    # Without the recovery check nothing divides by the steady rate: the settings are fine.
    sc = load_scenario("cloud-outage", ["workload.warmup_s=200", "checks.max_recovery_ratio=1.0",
                                        "workload.warmup_s=100"])
    assert sc.workload.warmup_s == 100.0


def test_valid_scenarios_build_the_same_dataclasses() -> None:
    from dcrec.simulator.scenario import FleetSpec, WorkloadSpec

    sc = load_scenario("cloud-outage")
    assert sc.workload == WorkloadSpec(kind="closed_loop", devices=2000, duration_s=330.0, warmup_s=60.0)
    assert sc.fleet == FleetSpec(store_dir="tmpfs", bin_s=10.0, deadline_s=1.0)
    assert sc.policies == ("system",) and sc.description.startswith("2,000 closed-loop users")
    mine = parse_scenario({"fleet": {"bin_s": 5, "concurrency": 2}, "users": {"dim": 8}})
    assert isinstance(mine.fleet.bin_s, float) and mine.fleet.bin_s == 5.0  # an int is a float
    assert mine.fleet.concurrency == 2 and mine.users.dim == 8 and mine.name == "scenario"
    assert mine.network is None and mine.faults == () and mine.workload == WorkloadSpec()


def test_users_overrides_the_scenario_user_count() -> None:
    """Issue 21: --users set workload.max_users, which a closed-loop scenario ignores."""
    assert load_scenario("cloud-outage", users=50).workload.devices == 50  # closed loop
    steady = load_scenario("steady", users=5)
    assert steady.workload.max_users == 5 and "--users 5" in steady.source  # trace
    # The kind as overridden decides which key counts the users.
    assert load_scenario("cloud-outage", ["workload.kind=trace"], users=4).workload.max_users == 4
    with pytest.raises(ScenarioError, match="--users 5 and --set workload.devices"):
        load_scenario("cloud-outage", ["workload.devices=10"], users=5)


def test_the_description_shows_the_values_as_run(tmp_path: Path) -> None:
    """Issue 21: the report's description still gave the file's values after --set."""
    from dcrec.simulator.report import write_report

    sc = load_scenario("cloud-outage", ["workload.devices=200", "users.event_gap_s=4"], users=None)
    assert sc.description == ("2,000 closed-loop users; the cloud is killed at t=150 s for 30 s. "
                              "[as run: workload.devices = 200 (--set; file: 2000); "
                              "users.event_gap_s = 4 (--set; file: 10.0)]")
    assert load_scenario("cloud-outage").description.endswith("for 30 s.")  # nothing changed
    assert load_scenario("steady", users=3).description.endswith(
        "[as run: workload.max_users = 3 (--users; not in the file)]")
    own = load_scenario("cloud-outage", ["workload.devices=200", 'description="mine"'])
    assert own.description == "mine"  # a description given on the command line is kept
    html = write_report(tmp_path, sc, []).read_text()
    assert "workload.devices = 200 (--set; file: 2000)" in html


def test_users_with_scenario_on_the_command_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from dcrec.shared.cli import main
    from dcrec.simulator import runner

    seen = []

    def fake_run(sc, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(sc)
        return runner.Outcome([])

    monkeypatch.setattr(runner, "run_scenario", fake_run)
    monkeypatch.setattr("signal.signal", lambda *_: None)  # the command's SIGTERM handler
    assert main(["simulate", "--scenario", "cloud-outage", "--users", "7",
                 "--connect", "127.0.0.1:1", "--out", "/dev/null/x"]) == 0
    assert seen[0].workload.devices == 7
    assert "workload.devices = 7 (--users; file: 2000)" in capsys.readouterr().out
    assert main(["simulate", "--scenario", "cloud-outage", "--set", "workload.max_users=x",
                 "--set", "checks.max_lost_events=-1", "--connect", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "workload.max_users: must be an integer" in err and "checks.max_lost_events" in err
