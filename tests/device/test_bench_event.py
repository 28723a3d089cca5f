"""``dcrec device bench-event``: the real record() path timed by stage, a checkout side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.device.bench_event import Release, bench_event, format_report
from dcrec.shared.cli import main
from dcrec.shared.data import Dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def release_registry(cloud_model_dir: Path, device_model_dir: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bench-event")
    assert main(["cloud", "neighbours", "--model-dir", str(cloud_model_dir), "--out",
                 str(work / "nb.npz")]) == 0
    root = work / "registry"
    config = json.loads((device_model_dir / "model.json").read_text())
    ModelRegistry(root).publish(device_model_dir / "model.onnx", config, version="v1",
                                neighbours=work / "nb.npz")
    return root


@pytest.mark.timeout(300)
def test_bench_event_times_every_stage_and_compares_a_checkout(release_registry: Path,
                                                               ml100k: Dataset) -> None:
    release = Release.from_registry(release_registry)
    assert release.neighbours is not None
    seqs = [ml100k.sequence(u) for u in range(ml100k.n_users)]
    # This very checkout as the "older" one: it goes through the namespaced-checkout path, and
    # the lists it shows must be the same event for event.
    res = bench_event(release, seqs, events=120, warmup=20, block=40, devices=6, baselines=[REPO],
                      config={"measure": "regret", "device_candidates": 3})
    ours, base = res.subjects
    assert len(ours.totals) == len(base.totals) == 120
    assert ours.summary()["median_ms"] > 0 and ours.summary()["p99_ms"] >= ours.summary()["median_ms"]
    assert res.identical[base.label] == 1.0
    stages = ours.breakdown()
    for stage in ("store append", "local list", "policy", "other (runtime Python)"):
        assert stage in stages, stages
    assert any(k.startswith("model") for k in stages)
    report = format_report(res)
    assert "| stage |" in report and "identical" in report


def test_bench_event_refuses_what_it_cannot_run(release_registry: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["device", "bench-event", "--registry", str(release_registry), "--set", "measure=nope"]) == 2
    assert "measure" in capsys.readouterr().err
    assert main(["device", "bench-event", "--registry", str(release_registry), "--baseline",
                 str(tmp_path)]) == 2
    assert "--baseline" in capsys.readouterr().err
    assert main(["device", "bench-event", "--registry", str(tmp_path)]) == 1
    assert "no live release" in capsys.readouterr().err
