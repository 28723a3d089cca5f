"""The fleet engine against a real cloud server process on loopback: traces, simulated users, faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from dcrec.device.reranker import OnnxReranker
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.fleet import Fleet, FleetConfig
from dcrec.simulator.fleet_run import run_fleet
from dcrec.simulator.runner import ManagedCloud, evaluate_checks
from dcrec.simulator.scenario import parse_scenario
from dcrec.simulator.workload import TraceWorkload


@pytest.fixture(scope="module")
def cloud(cloud_model_dir: Path, registry_dir: Path):  # type: ignore[no-untyped-def]
    with CloudProcess(cloud_model_dir, registry_dir) as proc:
        yield proc


def test_trace_fleet_is_the_same_whatever_the_concurrency_and_evictions(
        tmp_path: Path, cloud: CloudProcess, device_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50)
    workload = TraceWorkload(ml_split, "real", max_users=12)
    base = FleetConfig(workdir=tmp_path / "a", bin_s=86400.0)
    a = Fleet(workload, cloud.address, rr, base).run()
    b = Fleet(workload, cloud.address, rr, FleetConfig(
        workdir=tmp_path / "b", bin_s=86400.0, concurrency=4, max_open=3, channels=3)).run()
    assert a.devices == b.devices == 12 and a.lost_events == b.lost_events == 0
    assert b.evictions > 0 and a.evictions == 0  # stores closed and reopened from their files
    assert a.series.deterministic() == b.series.deterministic()
    s = a.summary()
    assert s["events"] > 200 and s["bootstrap_requests"] == 12 and s["shown_empty"] == 0
    assert 0 < s["requests"] < s["events"] and s["bytes_up"] > 0 and s["bytes_down"] > 0
    assert s["latency_p99_ms"] >= s["latency_p50_ms"] > 0
    # Each device's SQLite file holds its seed history and every event it was fed.
    for spec in workload.devices():
        items = ml_split.stream_events(spec.user)[0]
        import sqlite3
        with sqlite3.connect(tmp_path / "b" / "devices" / f"{spec.device_id}.sqlite") as conn:
            stored = [r[0] for r in conn.execute("SELECT item_id FROM events ORDER BY id")]
        assert stored == [*spec.history.tolist(), *items.tolist()]


# The unbudgeted disagreement policy (the system's "disagreement" override: a fixed rbo
# threshold): nothing caps its requests, so the retry herd after an outage is the spreading's.
OUTAGE = {
    "name": "outage-test", "seed": 3, "policies": ["disagreement"], "runtime": {"measure": "rbo"},
    "workload": {"kind": "closed_loop", "devices": 200, "duration_s": 130.0, "warmup_s": 20.0},
    "users": {"event_gap_s": 4.0, "session_gap_s": 30.0},
    "fleet": {"bin_s": 10.0, "deadline_s": 1.0, "upload_telemetry": True},
    "faults": [{"kind": "cloud_down", "at_s": 50.0, "duration_s": 30.0}],
    "checks": {"max_lost_events": 0, "max_shown_empty": 0, "max_recovery_ratio": 2.0,
               "max_telemetry_pending": 0},
}


def test_cloud_outage_loses_nothing_and_recovers_without_a_herd(
        tmp_path: Path, cloud_model_dir: Path, registry_dir: Path) -> None:
    sc = parse_scenario(OUTAGE)
    with CloudProcess(cloud_model_dir, registry_dir) as proc:
        pid = proc.proc.pid  # type: ignore[union-attr]
        r = run_fleet(sc, "disagreement", proc.address, tmp_path, ManagedCloud(proc))
        assert proc.proc is not None and proc.proc.pid != pid  # it really was killed and restarted
    checks = evaluate_checks(sc, r)
    assert all(c["ok"] for c in checks.values()), checks
    rows = {int(row["t_rel_s"]): row for row in r.series.rows()}
    down = [rows[t] for t in (50, 60, 70)]
    assert sum(int(x["failed"]) for x in down) > 0  # devices did try, and failed
    assert all(int(x["events"]) > 30 and int(x["shown_empty"]) == 0 for x in down)  # cache on screen
    assert all(x["HR@10"] > 0 for x in down)
    after = [rows[t] for t in (90, 100, 110)]
    assert sum(int(x["requests"]) - int(x["failed"]) for x in after) > 0  # lists flow again
    assert r.lost_events == 0 and r.deferred > 0  # recovery spreading held requests back
    # Every attempt each device logged, the failed ones of the outage included, reached the
    # cloud once the devices uploaded their outboxes at the end.
    s = r.summary()
    assert s["failed_requests"] > 0
    assert r.telemetry_sent == s["requests"] + s["bootstrap_requests"] and r.telemetry_pending == 0


def test_lossy_network_through_the_proxy(tmp_path: Path, cloud: CloudProcess) -> None:
    sc = parse_scenario({
        "name": "lossy-test", "policies": ["always"],
        "workload": {"kind": "closed_loop", "devices": 40, "duration_s": 60.0},
        "users": {"event_gap_s": 4.0, "session_gap_s": 30.0},
        "fleet": {"bin_s": 10.0, "concurrency": 8, "channels": 4, "deadline_s": 1.0},
        "network": {"latency_ms": 20.0, "jitter": 0.3, "loss": 0.05, "bandwidth_kbps": 2000.0},
        "faults": [{"kind": "network_down", "at_s": 30.0, "duration_s": 10.0}],
    })
    r = run_fleet(sc, "always", cloud.address, tmp_path)
    assert r.proxy is not None and r.proxy.retransmits > 0 and r.proxy.refused + r.proxy.resets > 0
    assert r.proxy.bytes_down > r.summary()["bytes_down"] > 0  # wire bytes include HTTP/2 framing
    rows = {int(row["t_rel_s"]): row for row in r.series.rows()}
    assert int(rows[30]["failed"]) > 0 and int(rows[50]["requests"]) > int(rows[50]["failed"])
    assert r.summary()["latency_p50_ms"] >= 40.0  # two one-way delays of ~20 ms
    assert r.lost_events == 0 and r.summary()["shown_empty"] == 0


@pytest.fixture(scope="module")
def bare_cloud(cloud_model_dir: Path):  # type: ignore[no-untyped-def]
    """A cloud without a device-model registry (devices show its order): quick to start."""
    with CloudProcess(cloud_model_dir, None) as proc:
        yield proc


@pytest.mark.parametrize("concurrency", [1, 8])
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_network_outage_fails_calls_under_the_simulated_clock(
        tmp_path: Path, bare_cloud: CloudProcess, mode: str, concurrency: int) -> None:
    """Issue 21: under the sim clock other devices' events carried the clock through the
    window in wall milliseconds, so calls stalled in a blackhole (or not yet cut by the
    refuse watcher) went through. Now every call inside the window fails, none outside."""
    sc = parse_scenario({
        "name": "outage-modes", "policies": ["always"],
        "workload": {"kind": "closed_loop", "devices": 10, "duration_s": 40.0},
        "users": {"event_gap_s": 4.0, "session_gap_s": 30.0},
        "fleet": {"bin_s": 10.0, "deadline_s": 0.5, "concurrency": concurrency, "channels": 2},
        "network": {"outage_mode": mode},
        "faults": [{"kind": "network_down", "at_s": 20.0, "duration_s": 10.0}],
    })
    r = run_fleet(sc, "always", bare_cloud.address, tmp_path)
    rows = {int(row["t_rel_s"]): row for row in r.series.rows()}
    down = rows[20]
    assert int(down["requests"]) > 0 and int(down["failed"]) == int(down["requests"])
    assert all(int(rows[t]["failed"]) == 0 and int(rows[t]["requests"]) > 0 for t in (10, 30))
    assert r.proxy is not None
    if mode == "blackhole":  # calls ran into their 0.5 s deadline; refused ones fail fast
        assert r.proxy.refused == 0 and float(down["latency_p50_ms"]) >= 450.0
    else:
        assert r.proxy.refused + r.proxy.resets > 0 and float(down["latency_p50_ms"]) < 450.0
    assert r.lost_events == 0


def test_wall_clock_paces_events(tmp_path: Path, cloud: CloudProcess) -> None:
    sc = parse_scenario({
        "name": "wall-test", "policies": ["never"],
        "workload": {"kind": "closed_loop", "devices": 10, "duration_s": 20.0},
        "users": {"event_gap_s": 2.0, "session_gap_s": 10.0},
        "fleet": {"clock": "wall", "speed": 20.0, "bin_s": 5.0, "store_dir": "tmpfs"},
    })
    start = time.perf_counter()
    r = run_fleet(sc, "never", cloud.address, tmp_path)
    elapsed = time.perf_counter() - start
    assert r.lost_events == 0  # read back from the tmpfs files before they were removed
    assert not list(Path("/dev/shm").glob(f"dcrec-fleet-{os.getpid()}-*"))
    assert r.summary()["events"] > 10
    assert 0.8 <= r.wall_s <= 5.0 and elapsed >= 0.8  # 20 simulated seconds at 20x: about 1 s
    last = max(float(row["t_rel_s"]) for row in r.series.rows())
    assert last <= 20.0


def test_closed_loop_engagement_depends_on_the_policy(tmp_path: Path, cloud: CloudProcess) -> None:
    """Fresh lists on every event keep simulated users clicking more than a list never refreshed."""
    sc = parse_scenario({
        "name": "engagement-test", "seed": 1,
        "workload": {"kind": "closed_loop", "devices": 40, "duration_s": 240.0},
        "users": {"event_gap_s": 5.0, "session_gap_s": 60.0},
        "fleet": {"bin_s": 60.0},
    })
    never = run_fleet(sc, "never", cloud.address, tmp_path / "never").summary()
    always = run_fleet(sc, "always", cloud.address, tmp_path / "always").summary()
    assert never["requests"] == 0 and always["request_ratio"] == pytest.approx(1.0)
    assert always["HR@10"] > never["HR@10"]
    assert np.isfinite(always["NDCG@10"]) and always["list_age_mean_s"] < never["list_age_mean_s"]


def test_a_crashing_device_fails_the_run(tmp_path: Path, cloud: CloudProcess, ml_split) -> None:  # type: ignore[no-untyped-def]
    """Errors in worker threads are not swallowed: the run stops and raises them."""
    workload = TraceWorkload(ml_split, "real", max_users=4)
    fleet = Fleet(workload, cloud.address, None, FleetConfig(workdir=tmp_path, concurrency=3))
    original = fleet._handle
    calls = []

    def flaky(dev, t, first):  # type: ignore[no-untyped-def]
        calls.append(t)
        if len(calls) == 8:
            raise RuntimeError("device crashed")
        original(dev, t, first)

    fleet._handle = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="device crashed"):
        fleet.run()
