"""The report: CSV, JSON, PNG plots embedded in a self-contained HTML page; the CLI that writes it."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from dcrec.shared.cli import main
from dcrec.simulator.fleet import FleetResult
from dcrec.simulator.metrics import TimeSeries
from dcrec.simulator.report import summary_table, write_report
from dcrec.simulator.scenario import parse_scenario


def _result(policy: str) -> FleetResult:
    ts = TimeSeries(0.0, 10.0)
    for t in range(100):
        ts.event(float(t), t % 12 - 1, float(t % 30), False)
        if t % 4 == 0:
            ts.request(float(t), "disagreement", t % 40 != 0, 2.0 + t % 7, 800, 1600)
    return FleetResult(policy, ts, devices=5, wall_s=1.0, setup_s=0.1, lost_events=0, deferred=0,
                       evictions=0, rss_start_mb=100.0, rss_peak_mb=101.0)


def test_report_files(tmp_path: Path) -> None:
    sc = parse_scenario({"name": "r", "faults": [{"kind": "cloud_down", "at_s": 30, "duration_s": 20}]},
                        source="name = 'r'")
    checks = {"never: lost events": {"value": 0, "limit": 0, "ok": True}}
    page = write_report(tmp_path, sc, [_result("never"), _result("always")], checks)
    html = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 7
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "plots").glob("*.png"))) == 7
    assert "cloud_down" not in html or "lost events" in html
    assert "<td>always</td>" in html and "pass" in html
    with (tmp_path / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and {"policy", "HR@10", "cloud_qps", "latency_p99_ms"} <= set(rows[0])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["policy"] for r in summary["results"]] == ["never", "always"]
    table = summary_table([_result("never")])
    assert table.startswith("| policy | HR@10 | NDCG@10 | request_ratio")


def test_simulate_scenario_cli(tmp_path: Path, cloud_model_dir: Path, registry_dir: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('name = "tiny"\npolicies = ["never", "system", "always"]\n'
                        '[workload]\nkind = "trace"\nmax_users = 3\n[fleet]\nbin_s = 86400.0\n'
                        '[checks]\nmax_lost_events = 0\nmax_shown_empty = 0\n')
    out = tmp_path / "out"
    code = main(["simulate", "--scenario", str(scenario), "--cloud-model", str(cloud_model_dir),
                 "--registry", str(registry_dir), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| never |" in printed and "| system |" in printed and "| always |" in printed
    assert "check pass" in printed
    # the system against each other policy, paired over the same devices
    for other in ("never", "always"):
        assert f"NDCG@10 per device, system - {other}: " in printed
        assert "(95 % paired bootstrap over 3 devices)" in printed
    with (out / "devices.csv").open() as f:
        devices = list(csv.DictReader(f))
    assert len(devices) == 9 and {"policy", "device", "user", "events", "hits", "ndcg"} <= set(devices[0])
    assert sum(int(d["events"]) for d in devices if d["policy"] == "system") > 0
    assert (out / "report.html").is_file() and (out / "plots" / "quality.png").is_file()
    code = main(["simulate", "--scenario", str(scenario), "--set", "checks.min_events_per_s=1e12",
                 "--set", "workload.max_users=1", "--set", 'policies=["never"]',
                 "--cloud-model", str(cloud_model_dir), "--out", str(out)])
    assert code == 1 and "check FAIL" in capsys.readouterr().out  # a failed check fails the command
