"""A fleet replay with the budgeted policy: the ratio meets its target, no device exceeds its budget."""

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from dcrec.device.reranker import OnnxReranker
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.replay import ReplayConfig, replay

TARGET = 0.05


@pytest.mark.timeout(600)
def test_budgeted_fleet_meets_ratio_and_never_overspends(tmp_path: Path, cloud_model_dir: Path,
                                                         device_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50)
    with CloudProcess(cloud_model_dir) as cloud:
        res = replay(ml_split, cloud.address, rr,
                     ReplayConfig(workdir=tmp_path, policy="budgeted", max_users=300, seed=3))
    assert res.events > 3000 and res.failed_requests == 0
    # Fleet-wide: within one percentage point of the target.
    assert abs(res.request_ratio - TARGET) <= 0.01, res.summary()
    # The trigger, not the fallback that spends a token kept waiting too long, spends most.
    assert res.reasons["disagreement"] > max(0.35 * res.requests, res.reasons.get("periodic", 0)), res.reasons
    # Per device, from its own files: requests after the first list never exceed the allowance.
    stores = sorted((tmp_path / "devices").glob("*.sqlite"))
    assert len(stores) == res.devices
    total = 0
    for path in stores:
        conn = sqlite3.connect(path)
        state = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'runtime_state'").fetchone()[0])
        bucket = state["policy"]["state"]
        sent = conn.execute("SELECT COUNT(*) FROM requests WHERE reason != 'cold_start'").fetchone()[0]
        conn.close()
        assert bucket["events"] > 0
        assert sent <= bucket["granted"] <= bucket["initial"] + TARGET * bucket["events"] + 1e-9, path.name
        total += sent
    assert total == res.requests


@pytest.mark.timeout(600)
def test_learned_fleet_meets_ratio_and_never_overspends(tmp_path: Path, ml100k, cloud_model_dir: Path,  # type: ignore[no-untyped-def]
                                                        device_model_dir: Path, ml_split, caplog) -> None:
    from dcrec.cloud.training.request_value import train_request_model
    from dcrec.shared.request_value import RequestValueModel

    train_request_model(ml100k, ml_split.cloud_sequences(), device_model_dir, tmp_path / "rm.json",
                        tmp_path / "rm", "cooccurrence", {}, users=150)
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50, n_items=ml100k.n_items)
    rr.request_model = RequestValueModel.from_dict(json.loads((tmp_path / "rm.json").read_text()))
    with CloudProcess(cloud_model_dir) as cloud, caplog.at_level(logging.WARNING, "dcrec.device.policy"):
        res = replay(ml_split, cloud.address, rr,
                     ReplayConfig(workdir=tmp_path, policy="learned", max_users=300, seed=3))
    assert not [r for r in caplog.records if "falling back" in r.getMessage()]  # the model decided
    assert res.events > 3000 and res.failed_requests == 0
    assert abs(res.request_ratio - TARGET) <= 0.01, res.summary()
    # the model's trigger (sent as DISAGREEMENT) spends most of the budget
    assert res.reasons["disagreement"] > max(0.35 * res.requests, res.reasons.get("periodic", 0)), res.reasons
    for path in sorted((tmp_path / "devices").glob("*.sqlite")):
        conn = sqlite3.connect(path)
        state = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'runtime_state'").fetchone()[0])
        bucket = state["policy"]["state"]
        sent = conn.execute("SELECT COUNT(*) FROM requests WHERE reason != 'cold_start'").fetchone()[0]
        conn.close()
        assert state["policy"]["name"] == "learned" and "value_tracker" in bucket
        assert sent <= bucket["granted"] <= bucket["initial"] + TARGET * bucket["events"] + 1e-9, path.name
