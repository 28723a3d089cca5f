"""Reranking latency on the device: ONNX Runtime (float32, int8) against torch eager, one request at a time.

What a phone does per event: score ``candidates`` items for one user with a
``history``-item history, batch 1. Calls of the three engines are interleaved
(round-robin) so a noisy shared machine slows them alike; each engine gets
the same random inputs. Reports the median and p99 per call (ms), model size,
and the speed-up of ONNX Runtime over torch.

Example::

    rows = bench_latency(model, workdir, calls=2000)
    print(format_rows(rows))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyRow:
    engine: str
    median_ms: float
    p99_ms: float
    mean_ms: float
    size_bytes: int
    calls: int


def bench_latency(model: object, workdir: str | Path, candidates: int = 100, history: int = 50,
                  calls: int = 2000, warmup: int = 50, threads: int = 1,
                  seed: int = 0, neighbours: str | Path | None = None) -> list[LatencyRow]:
    """Time ``model`` (a torch reranker from :mod:`dcrec.cloud.training.archs`) in every engine.

    ``neighbours``: a neighbour index file; adds a row for what the runtime does with it
    between requests (the local list of ``candidates`` items for the history, blended with
    the cached list), interleaved with the engines.
    """
    import torch

    from dcrec.cloud.training.export import export_onnx, quantize_int8
    from dcrec.device.reranker import OnnxReranker

    torch.set_num_threads(threads)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    model.eval()  # type: ignore[attr-defined]
    fp32 = export_onnx(model, work / "model.onnx")  # type: ignore[arg-type]
    int8 = quantize_int8(fp32, work / "model.int8.onnx")
    max_len = int(model.cfg.max_len)  # type: ignore[attr-defined]
    n = int(model.cfg.n_items)  # type: ignore[attr-defined]
    rr32 = OnnxReranker.from_file(fp32, max_len, threads=threads)
    rr8 = OnnxReranker.from_file(int8, max_len, threads=threads)
    rng = np.random.default_rng(seed)
    hists = rng.integers(1, n + 1, (64, history))
    cands = rng.integers(1, n + 1, (64, candidates))

    def torch_call(h: np.ndarray, c: np.ndarray) -> None:
        with torch.no_grad():
            model.score(torch.from_numpy(h[-max_len:][None]), torch.from_numpy(c[None]))  # type: ignore[attr-defined]

    engines = {
        "torch eager (float32)": torch_call,
        "onnxruntime float32": rr32.score,
        "onnxruntime int8": rr8.score,
    }
    sizes = {"torch eager (float32)": sum(p.numel() * p.element_size()
                                          for p in model.parameters()),  # type: ignore[attr-defined]
             "onnxruntime float32": fp32.stat().st_size, "onnxruntime int8": int8.stat().st_size}
    if neighbours is not None:
        from dcrec.device.fusion import blend_lists
        from dcrec.shared.neighbours import NeighbourIndex

        index = NeighbourIndex.load(neighbours)
        cached_scores = np.sort(rng.random(candidates))[::-1]

        def local_call(h: np.ndarray, c: np.ndarray) -> None:
            items, scores = index.local_list(h, candidates, exclude=set(h.tolist()))
            blend_lists(c, cached_scores, items, scores, 1.0)

        engines["neighbour index: local list + blend (numpy)"] = local_call
        sizes["neighbour index: local list + blend (numpy)"] = Path(neighbours).stat().st_size
    times: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(warmup + calls):
        h, c = hists[i % 64], cands[i % 64]
        for name, fn in engines.items():
            t = time.perf_counter()
            fn(h, c)
            if i >= warmup:
                times[name].append((time.perf_counter() - t) * 1e3)
    rows = []
    for name, ts in times.items():
        a = np.asarray(ts)
        rows.append(LatencyRow(name, float(np.median(a)), float(np.percentile(a, 99)),
                               float(a.mean()), int(sizes[name]), a.size))
    return rows


def format_rows(rows: list[LatencyRow]) -> str:
    base = next(r for r in rows if r.engine.startswith("torch")).median_ms
    lines = ["| engine | median ms | p99 ms | mean ms | speed-up (median) | size |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        speed = "-" if r.engine.startswith("neighbour") else f"{base / r.median_ms:.1f}x"  # not an engine
        lines.append(f"| {r.engine} | {r.median_ms:.3f} | {r.p99_ms:.3f} | {r.mean_ms:.3f} | "
                     f"{speed} | {r.size_bytes / 1e6:.2f} MB |")
    return "\n".join(lines)
