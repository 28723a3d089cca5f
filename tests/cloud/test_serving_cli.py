"""Serving commands: several processes on one port, ``cloud eval``, ``cloud bench-serving``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from dcrec.cloud.load.bench_serving import markdown, summarize
from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.server import REPLICA_KEY
from dcrec.shared.cli import main
from dcrec.shared.data import Dataset
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc
from dcrec.shared.splits import leave_one_out
from dcrec.simulator.bench.cloud_eval import evaluate_loo

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"server exited early: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"{path.name} not written within {timeout_s}s"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_two_processes_serve_one_port(cloud_model_dir: Path, tmp_path: Path) -> None:
    ready = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(cloud_model_dir),
         "--address", "127.0.0.1:0", "--ready-file", str(ready), "--insecure",
         "--processes", "2", "--batch-max-size", "8", "--batch-max-wait-ms", "2"],
        cwd=REPO, stderr=subprocess.PIPE)
    try:
        _wait_for(ready, proc, 120)
        address = f"127.0.0.1:{int(ready.read_text())}"
        servers = [p for p in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(servers) == 2
        replicas = set()
        for i in range(24):  # each channel its own connection; the kernel spreads connections
            channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            resp, call = pb_grpc.RecommenderStub(channel).GetCandidates.with_call(
                pb.GetCandidatesRequest(device_id=f"d{i}", count=10, exclude_seen=True,
                                        history=[pb.Event(item_id=1 + i, timestamp=1.0)]),
                timeout=20)
            assert len(resp.item_ids) == 10
            replicas.add(dict(call.trailing_metadata())[REPLICA_KEY])
            channel.close()
            if len(replicas) == 2:
                break
        assert len(replicas) == 2  # two processes answered on the same port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in servers)  # drained and reaped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_eval_reports_leave_one_out_metrics(cloud_model_dir: Path, ml100k: Dataset,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cloud", "eval", "--model-dir", str(cloud_model_dir), "--dataset", "ml-100k",
                 "--max-users", "300"]) == 0
    out = capsys.readouterr().out
    head, row = [line for line in out.splitlines() if line.startswith("| ")][:2]
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")],
                     strict=True))
    assert cells["users"] == "300" and cells["list"] == "top-100"
    # The same figure, computed independently: one generate call per user, position of the target.
    gen = load_generator(cloud_model_dir)
    test = leave_one_out(ml100k).test
    idx = np.sort(np.random.default_rng(0).choice(len(test), 300, replace=False))
    hits = sum(int(test.targets[j]) in gen.generate([test.histories[j]], 10)[0].items.tolist()
               for j in idx)
    assert float(cells["HR@10"]) == pytest.approx(hits / 300, abs=1e-4)
    assert 0.0 < float(cells["HR@5"]) <= float(cells["HR@10"]) <= float(cells["HR@20"]) <= 1.0


def test_eval_refuses_a_model_of_another_data_set(cloud_model_dir: Path,
                                                  synthetic_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="another data set"):
        evaluate_loo(load_generator(cloud_model_dir), synthetic_dataset)


def test_load_generator_and_bench_summary(cloud_model_dir: Path) -> None:
    from dcrec.cloud.load import loadgen
    from dcrec.cloud.serving.batching import BatchConfig
    from dcrec.cloud.serving.server import ServerConfig, build_server
    from dcrec.cloud.serving.service import CandidateService

    cs = build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                      config=ServerConfig(insecure=True, max_workers=16,
                                          batching=BatchConfig(max_batch_size=8))).start()
    try:
        hists = [np.arange(1 + i, 6 + i) for i in range(20)]
        res = loadgen.run(f"127.0.0.1:{cs.port}", hists, clients=8, duration_s=0.5, warmup_s=0.1)
    finally:
        cs.stop(1.0)
    assert res["ok"] > 0 and res["errors"] == {} and res["p50_ms"] <= res["p99_ms"]
    assert cs.batcher is not None and cs.batcher.answered >= res["ok"]
    rows = [{**res, "setting": setting, "round": r, "load1": 1.0, "load1_after": 1.0,
             "mean_batch": 1.0, "throughput": thr}
            for r, (setting, thr) in enumerate([("no-batching", 100.0), ("batching", 350.0),
                                                ("no-batching", 120.0), ("batching", 300.0)])]
    [entry] = summarize(rows, (8,))
    assert entry["no-batching"]["throughput"] == 110.0 and entry["batching"]["throughput"] == 325.0
    assert entry["ratio"] == pytest.approx(325 / 110)
    text = markdown({"config": {"rounds": 2, "duration_s": 1.0, "batch_max_size": 8,
                                "batch_max_wait_ms": 5.0, "workers": 16},
                     "version": "v", "backend": "b", "cpus": 2, "summary": [entry]})
    assert "| 8 | batching | 325.0 |" in text and "2.95x" in text


def test_eval_compare_gives_a_paired_interval(cloud_model_dir: Path, ml100k: Dataset,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dcrec.cloud.models import backends
    from dcrec.simulator.bench.cloud_eval import paired_difference

    other = tmp_path / "narrow"  # a weaker co-occurrence table: one neighbour window, few votes
    backends.train("cooccurrence", ml100k, list(ml100k.sequences()), other, {"window": 1, "recent": 1})
    out_json = tmp_path / "eval.json"
    assert main(["cloud", "eval", "--model-dir", str(cloud_model_dir), "--dataset", "ml-100k",
                 "--max-users", "300", "--compare", str(other), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("| ")]) == 3  # head, 2 rows
    saved = json.loads(out_json.read_text())
    [d] = saved["differences"]
    assert d["low"] <= d["difference"] <= d["high"] and d["users"] == 300
    assert "per_user_ndcg10" not in saved
    # The difference is the mean of per-user differences, and a model against itself is exactly 0.
    a = evaluate_loo(load_generator(cloud_model_dir), ml100k, max_users=300)
    b = evaluate_loo(load_generator(other), ml100k, max_users=300)
    assert d["difference"] == pytest.approx(a.metrics["NDCG@10"] - b.metrics["NDCG@10"], abs=1e-9)
    same = paired_difference(a, a)
    assert same.difference == same.low == same.high == 0.0
