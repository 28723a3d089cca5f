from pathlib import Path

import pytest

from dcrec.device.reranker import OnnxReranker
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.replay import ReplayConfig, replay
from dcrec.simulator.run import format_table


def test_replay_bounds(tmp_path: Path, cloud_model_dir: Path, device_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50)
    with CloudProcess(cloud_model_dir) as cloud:
        runs = {p: replay(ml_split, cloud.address, rr,
                          ReplayConfig(workdir=tmp_path / p, policy=p, max_users=20))
                for p in ("never", "always", "disagreement")}
    never, always, dis = runs["never"], runs["always"], runs["disagreement"]
    assert never.events == always.events == dis.events > 100
    assert never.devices == 20 and never.bootstrap_requests == 20
    assert never.requests == 0 and never.request_ratio == 0.0
    assert always.requests == always.events and always.request_ratio == pytest.approx(1.0)
    assert 0.0 <= dis.request_ratio <= 1.0
    assert sum(dis.reasons.values()) == dis.requests
    for r in runs.values():
        s = r.summary()
        assert 0.0 <= s["NDCG@10"] <= s["HR@10"] <= 1.0 and s["events_per_s"] > 0
        assert r.shown_empty == 0
    # Fresh lists on every event are at least as good as never refreshing, on the same events.
    assert always.summary()["HR@10"] >= never.summary()["HR@10"]
    table = format_table(list(runs.values()))
    assert "| always |" in table and "NDCG@10" in table
    # Every device wrote its own SQLite file.
    assert len(list((tmp_path / "never" / "devices").glob("*.sqlite"))) == 20
