"""``dcrec device bench-latency``: every engine times the same calls; the neighbour index row."""

from __future__ import annotations

from pathlib import Path

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.models.neighbours import build
from dcrec.cloud.training.bench_latency import bench_latency, format_rows
from dcrec.cloud.training.train import load_sasrec


def test_every_engine_and_the_local_list_are_timed(tmp_path: Path, device_model_dir: Path,
                                                    cloud_model_dir: Path) -> None:
    build(load_generator(cloud_model_dir), neighbours=20).save(tmp_path / "n.npz")
    rows = bench_latency(load_sasrec(device_model_dir), tmp_path / "work", calls=30, warmup=2,
                         neighbours=tmp_path / "n.npz")
    names = [r.engine for r in rows]
    assert names[:3] == ["torch eager (float32)", "onnxruntime float32", "onnxruntime int8"]
    assert names[3].startswith("neighbour index")
    for r in rows:
        assert r.calls == 30 and 0 < r.median_ms <= r.p99_ms and r.size_bytes > 0
    assert rows[2].size_bytes < rows[1].size_bytes  # int8 is smaller
    table = format_rows(rows)
    assert table.count("\n") == 1 + len(rows) and "1.0x" in table
