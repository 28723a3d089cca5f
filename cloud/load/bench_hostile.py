"""Hostile-telemetry benchmark: /metrics and serving latency before and after a flood of records.

Two ``dcrec cloud serve`` processes on loopback, the same model and settings.
Into one, a single device first uploads ``records`` telemetry records whose
reasons and kinds are all distinct (the attack that used to mint one metric
series per record); the other stays clean. Then a load generator
(:mod:`dcrec.cloud.load.loadgen`, its own process) drives each in turn with closed-loop
clients while a scraper reads its ``/metrics`` twice a second, as Prometheus
and a dashboard would. The two are measured interleaved over ``rounds``
(alternating which goes first), so both see the same machine; the table gives
medians, the ratio of the p99s and the size of ``/metrics``.

Example::

    dcrec cloud bench-hostile --model-dir runs/demo/cloud --records 200000 --clients 64
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.load.bench_serving import BenchConfig, ServerProcess, _histories, _loadgen
from dcrec.cloud.load.loadgen import flood_telemetry, save_histories

log = logging.getLogger(__name__)

PHASES = ("clean", "hostile")


@dataclass
class HostileConfig:
    model_dir: Path
    records: int = 200_000  # hostile records from one device, in all
    clients: int = 64  # closed-loop serving clients
    duration_s: float = 15.0  # measured seconds per phase
    warmup_s: float = 2.0
    rounds: int = 3  # interleaved repetitions, alternating which server goes first
    scrape_s: float = 0.5  # /metrics read this often during every phase
    workers: int = 64  # handler threads (as bench-serving: none shed at `clients`)
    out_dir: Path | None = None

    def validate(self) -> None:
        if self.records < 1 or self.clients < 1 or self.rounds < 1:
            raise ValueError("records, clients and rounds must be >= 1")
        if self.duration_s <= 0 or self.scrape_s <= 0:
            raise ValueError("duration and scrape interval must be > 0")


def _metrics_bytes(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as resp:
        return len(resp.read())


class _Scraper(threading.Thread):
    """Reads /metrics every ``every_s`` seconds until stopped; keeps each read's duration."""

    def __init__(self, http_port: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.http_port, self.every_s = http_port, every_s
        self.stop = threading.Event()
        self.seconds: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            t0 = time.perf_counter()
            _metrics_bytes(self.http_port)
            self.seconds.append(time.perf_counter() - t0)


def run(cfg: HostileConfig, say: Any = lambda s: None) -> dict[str, Any]:
    """Two servers, one flooded; returns the rows and the summary."""
    from dcrec.cloud.models.backends import load_generator

    cfg.validate()
    workdir = Path(cfg.out_dir or tempfile.mkdtemp(prefix="dcrec-bench-hostile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    serving = BenchConfig(model_dir=cfg.model_dir, duration_s=cfg.duration_s, warmup_s=cfg.warmup_s)
    hist_path = workdir / "histories.npz"
    save_histories(hist_path, _histories(serving, load_generator(cfg.model_dir).n_items))
    args = ["--workers", str(cfg.workers), "--max-inflight", str(cfg.workers)]
    servers = {phase: ServerProcess(phase, cfg.model_dir, args, workdir) for phase in PHASES}
    rows: list[dict[str, Any]] = []
    try:
        for srv in servers.values():
            srv.wait_ready()
        start_bytes = _metrics_bytes(servers["clean"].http_port)
        t0 = time.perf_counter()
        acked = flood_telemetry(f"127.0.0.1:{servers['hostile'].port}", cfg.records)
        say(f"{acked:,} of {cfg.records:,} hostile records acknowledged in "
            f"{time.perf_counter() - t0:.1f} s; /metrics {start_bytes:,} bytes clean, "
            f"{_metrics_bytes(servers['hostile'].http_port):,} bytes flooded")
        for r in range(cfg.rounds):
            for phase in (PHASES if r % 2 == 0 else PHASES[::-1]):
                srv = servers[phase]
                scraper = _Scraper(srv.http_port, cfg.scrape_s)
                scraper.start()
                load = os.getloadavg()[0]
                res = _loadgen(f"127.0.0.1:{srv.port}", hist_path, cfg.clients, serving)
                scraper.stop.set()
                scraper.join(30)
                res.update(phase=phase, round=r, load1=load, hostile_acked=acked,
                           metrics_bytes=_metrics_bytes(srv.http_port),
                           scrape_ms_median=float(np.median(scraper.seconds) * 1e3)
                           if scraper.seconds else float("nan"))
                rows.append(res)
                say(f"round {r + 1} {phase:7s} p50 {res['p50_ms']:7.2f} ms p99 {res['p99_ms']:7.2f} ms "
                    f"{res['throughput']:7.1f} req/s errors {res['errors']} /metrics "
                    f"{res['metrics_bytes']:,} bytes (scrape {res['scrape_ms_median']:.1f} ms) "
                    f"load {load:.2f}")
    finally:
        for srv in servers.values():
            srv.stop()
    summary = summarize(rows)
    result = {"config": {**asdict(cfg), "model_dir": str(cfg.model_dir), "out_dir": str(workdir)},
              "cpus": os.cpu_count(), "metrics_bytes_at_start": start_bytes, "rows": rows,
              "summary": summary}
    (workdir / "bench-hostile.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in ("clean", "hostile"):
        rs = [r for r in rows if r["phase"] == phase]
        out[phase] = {k: float(np.median([r[k] for r in rs]))
                      for k in ("p50_ms", "p99_ms", "throughput", "scrape_ms_median")}
        out[phase]["metrics_bytes_max"] = max(r["metrics_bytes"] for r in rs)
        out[phase]["errors"] = int(sum(sum(r["errors"].values()) for r in rs))
    out["p99_ratio"] = out["hostile"]["p99_ms"] / out["clean"]["p99_ms"]
    out["hostile_records"] = max(r["hostile_acked"] for r in rows)
    return out


def markdown(result: dict[str, Any]) -> str:
    cfg, s = result["config"], result["summary"]
    lines = [
        f"{s['hostile_records']:,} hostile telemetry records from one device; {cfg['clients']} "
        f"closed-loop clients, {cfg['rounds']} clean/hostile rounds of {cfg['duration_s']:g} s, "
        f"/metrics scraped every {cfg['scrape_s']:g} s; medians; {result['cpus']} CPUs",
        "",
        "| phase | p50 (ms) | p99 (ms) | throughput (req/s) | /metrics (bytes, max) | scrape (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase in ("clean", "hostile"):
        m = s[phase]
        lines.append(f"| {phase} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['throughput']:.1f} | "
                     f"{m['metrics_bytes_max']:,} | {m['scrape_ms_median']:.1f} | {m['errors']} |")
    lines += ["", f"- p99 under hostile telemetry / clean: {s['p99_ratio']:.2f}x",
              f"- /metrics at start: {result['metrics_bytes_at_start']:,} bytes"]
    return "\n".join(lines)
