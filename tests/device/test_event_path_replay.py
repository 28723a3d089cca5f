"""The lists shown are the same as before the event path was made fast.

The runtime of the last commit before that work is taken from git and replayed side by
side with this checkout through ``bench_event`` (the same users' events, the same release,
a real cloud server answering the policy's requests): every list shown must hold the
same items in the same order, and every score the device ranked by must agree within 1e-5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.device.bench_event import Release, bench_event
from dcrec.shared.cli import main
from dcrec.shared.data import Dataset

REPO = Path(__file__).resolve().parents[2]
BEFORE = "f38d8afe8720ed2b5fe56994bd85db36d026b082"  # the last commit with the old event path


@pytest.fixture(scope="module")
def before(tmp_path_factory: pytest.TempPathFactory) -> Path:
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(REPO), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
                                     capture_output=True).returncode != 0:
        pytest.skip(f"git history with {BEFORE[:8]} is not available")
    out = tmp_path_factory.mktemp("before")
    archive = subprocess.run([git, "-C", str(REPO), "archive", BEFORE, "device", "shared", "protos",
                              "cloud", "simulator", "pyproject.toml"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


@pytest.fixture(scope="module")
def release(cloud_model_dir: Path, device_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Release:
    work = tmp_path_factory.mktemp("replay-release")
    assert main(["cloud", "neighbours", "--model-dir", str(cloud_model_dir), "--out",
                 str(work / "nb.npz")]) == 0
    config = json.loads((device_model_dir / "model.json").read_text())
    ModelRegistry(work / "registry").publish(device_model_dir / "model.onnx", config, version="v1",
                                             neighbours=work / "nb.npz")
    return Release.from_registry(work / "registry")


@pytest.mark.timeout(600)
# Every setting spelled out: the two checkouts' defaults differ (the system's moved to regret
# and the user vector).
@pytest.mark.parametrize("config", [{"measure": "rbo", "adapt": False},
                                    {"measure": "regret", "device_candidates": 3, "adapt": True}],
                         ids=["rbo", "regret+device-candidates+user-vector"])
def test_the_fast_path_shows_what_the_old_one_showed(before: Path, release: Release, ml100k: Dataset,
                                                     cloud_model_dir: Path, config: dict) -> None:
    seqs = [ml100k.sequence(u) for u in range(ml100k.n_users)]
    res = bench_event(release, seqs, events=400, warmup=0, block=100, devices=12, baselines=[before],
                      config=config, policy="budgeted", stages=False, cloud_model=cloud_model_dir,
                      compare_scores=True)  # (the old checkout predates the learned policy)
    ours, old = res.subjects
    assert sum(ours.asked) > 0 and ours.asked == old.asked  # the same requests, at the same events
    assert res.identical[old.label] == 1.0
    assert res.score_diff[old.label] < 1e-5
