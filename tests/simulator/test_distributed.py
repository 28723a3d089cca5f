"""A 2-shard Ray run reproduces the single-process metrics with the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.fleet_run import run_fleet
from dcrec.simulator.scenario import parse_scenario

ray = pytest.importorskip("ray", reason="sharded runs need the fleet extra (ray)")


def test_two_shards_equal_one_process(tmp_path: Path, cloud_model_dir: Path, registry_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from dcrec.simulator.distributed import run_sharded

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    sc = parse_scenario({
        "name": "shards-test", "seed": 11,
        "workload": {"kind": "closed_loop", "devices": 20, "duration_s": 90.0},
        "users": {"event_gap_s": 5.0, "session_gap_s": 40.0},
        "fleet": {"bin_s": 20.0},
    })
    with CloudProcess(cloud_model_dir, registry_dir) as cloud:
        single = run_fleet(sc, "system", cloud.address, tmp_path / "single")
        sharded = run_sharded(sc, "system", cloud.address, tmp_path / "sharded", shards=2)
    assert sharded.devices == single.devices == 20
    assert single.summary()["events"] > 60 and single.summary()["requests"] > 0
    # Every bin of simulated time: events, hits, NDCG, requests by reason, bytes, list ages.
    assert sharded.series.deterministic() == single.series.deterministic()
    assert sharded.lost_events == 0
    # Both shards really ran: each wrote its own devices' stores.
    for shard in (0, 1):
        files = list((tmp_path / "sharded" / f"shard{shard}" / "devices").glob("*.sqlite"))
        assert len(files) == 10
