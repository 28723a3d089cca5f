"""Running a scenario without a cloud: a fleet that produced nothing, checks that measure nothing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dcrec.shared.cli import main
from dcrec.simulator import runner
from dcrec.simulator.fleet import FleetResult
from dcrec.simulator.metrics import TimeSeries
from dcrec.simulator.runner import EmptyRunError, Models, evaluate_checks, run_scenario
from dcrec.simulator.scenario import parse_scenario

EMPTY = {"name": "empty", "policies": ["never", "always"],
         "workload": {"kind": "closed_loop", "devices": 3, "duration_s": 60.0}}


def _result(policy: str, series: TimeSeries) -> FleetResult:
    return FleetResult(policy, series, devices=3, wall_s=0.5, setup_s=0.1, lost_events=0, deferred=0,
                       evictions=0, rss_start_mb=100.0, rss_peak_mb=100.0)


@pytest.fixture
def no_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """run_fleet replaced by fleets that produce nothing; the policies it was called for."""
    ran: list[str] = []

    def run_fleet(sc, policy, *args, **kwargs):  # type: ignore[no-untyped-def]
        ran.append(policy)
        return _result(policy, TimeSeries(0.0, sc.fleet.bin_s))

    monkeypatch.setattr(runner, "run_fleet", run_fleet)
    return ran


def test_a_run_without_events_is_an_error(tmp_path: Path, no_events: list[str]) -> None:
    """Issue 21: 0 events passed every check (nothing was lost, nothing was empty)."""
    with pytest.raises(EmptyRunError, match=r"scenario empty: the never fleet produced 0 events"):
        run_scenario(parse_scenario(EMPTY), Models(connect="127.0.0.1:1"), tmp_path, progress=False)
    assert no_events == ["never"]  # the other policy shares the workload: not run for nothing
    assert (tmp_path / "report.html").is_file()  # written first, to look at


def test_the_command_fails_on_a_run_without_events(tmp_path: Path, no_events: list[str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "empty.toml"
    scenario.write_text('name = "empty"\n[workload]\nkind = "closed_loop"\ndevices = 3\n'
                        "duration_s = 60.0\n")
    monkeypatch.setattr("signal.signal", lambda *_: None)  # the command's SIGTERM handler
    code = main(["simulate", "--scenario", str(scenario), "--connect", "127.0.0.1:1",
                 "--out", str(tmp_path / "out")])
    assert code == 1
    assert "dcrec: error: scenario empty: the system fleet produced 0 events" in \
        capsys.readouterr().err


def test_recovery_check_never_reports_nan_or_inf() -> None:
    """Issue 21: a run with nothing to compare failed with `steady nan/s ... = inf`."""
    sc = parse_scenario({
        "workload": {"kind": "closed_loop", "devices": 3, "duration_s": 120.0, "warmup_s": 10.0},
        "fleet": {"bin_s": 10.0}, "faults": [{"kind": "network_down", "at_s": 50.0, "duration_s": 20.0}],
        "checks": {"max_recovery_ratio": 2.0}})
    quiet = TimeSeries(0.0, 10.0)  # events, but no request before the fault, some after
    for t in range(0, 120, 2):
        quiet.event(float(t), -1, 0.0, False)
    quiet.request(95.0, "disagreement", True, 1.0, 10, 10)
    late = TimeSeries(0.0, 10.0)  # nothing until the fault ends
    late.event(100.0, -1, 0.0, False)
    flat = TimeSeries(0.0, 10.0)  # no request at all: no herd
    for t in range(0, 120, 2):
        flat.event(float(t), -1, 0.0, False)
    checks = {**evaluate_checks(sc, _result("quiet", quiet)), **evaluate_checks(sc, _result("late", late)),
              **evaluate_checks(sc, _result("flat", flat))}
    recovery = {k: c for k, c in checks.items() if "request peak" in k}
    assert len(recovery) == 3
    for c in recovery.values():
        assert c["value"] is None or math.isfinite(c["value"])  # type: ignore[arg-type]
    by_policy = {k.split(":")[0]: (k, c) for k, c in recovery.items()}
    name, c = by_policy["quiet"]
    assert c["value"] is None and not c["ok"] and "no requests before the fault" in name
    name, c = by_policy["late"]
    assert c["value"] is None and not c["ok"] and "not measured: no metrics bin between" in name
    assert by_policy["flat"][1] == {"value": 0.0, "limit": 2.0, "ok": True}
