"""Serving benchmark: the real server with and without dynamic batching, side by side.

Starts two ``dcrec cloud serve`` processes on loopback (one answering each
call alone, one batching), then drives them from a separate load-generator
process (:mod:`dcrec.cloud.load.loadgen`) at each client count. The CPU may be shared
with other work, so the two settings are measured interleaved: every round
visits every client count and alternates which setting goes first, and the
table reports the median over rounds, with the load average seen at each
measurement.

Example::

    dcrec cloud bench-serving --model-dir runs/textrec --clients 64 --duration 20 --rounds 3
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.load.loadgen import save_histories

log = logging.getLogger(__name__)

SETTINGS = ("no-batching", "batching")
READY_TIMEOUT_S = 120.0  # model loading on a busy machine


@dataclass
class BenchConfig:
    model_dir: Path
    levels: tuple[int, ...] = (1, 8, 64)  # concurrent closed-loop clients
    duration_s: float = 20.0  # measured seconds per (round, level, setting)
    warmup_s: float = 2.0  # not measured: connections, first batches, caches
    rounds: int = 3  # interleaved repetitions; the table shows medians
    batch_max_size: int = 64
    batch_max_wait_ms: float = 5.0
    workers: int = 0  # handler threads of both servers; 0 = the largest client count (none shed)
    count: int = 100  # candidates per request
    dataset: str | None = None  # real histories from this data set; None: random ones
    history_len: int = 50  # newest events sent per request
    n_histories: int = 2000  # distinct requests, cycled
    out_dir: Path | None = None

    def validate(self) -> None:
        if not self.levels or min(self.levels) < 1:
            raise ValueError("client counts must be >= 1")
        if self.duration_s <= 0 or self.rounds < 1 or self.batch_max_size < 2:
            raise ValueError("duration must be > 0, rounds >= 1 and batch max size >= 2")


def _histories(cfg: BenchConfig, n_items: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if cfg.dataset:
        from dcrec.shared.data import load_dataset
        from dcrec.shared.splits import leave_one_out

        ds = load_dataset(cfg.dataset)
        if ds.n_items != n_items:
            raise ValueError(f"{cfg.dataset} has {ds.n_items} items, the model {n_items}")
        hists = [h[-cfg.history_len:] for h in leave_one_out(ds).test.histories]
        return [hists[i] for i in rng.permutation(len(hists))[: cfg.n_histories]]
    lengths = rng.integers(5, cfg.history_len + 1, size=cfg.n_histories)
    return [rng.integers(1, n_items + 1, size=n).astype(np.int64) for n in lengths]


class ServerProcess:
    """One ``dcrec cloud serve --insecure`` on loopback, with its operator HTTP port for metrics."""

    def __init__(self, name: str, model_dir: Path, extra: list[str], workdir: Path) -> None:
        self.name = name
        self.ready = workdir / f"{name}.port"
        self.http_ready = workdir / f"{name}.http"
        self.log_path = workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(model_dir),
               "--address", "127.0.0.1:0", "--ready-file", str(self.ready),
               "--http-address", "127.0.0.1:0", "--http-ready-file", str(self.http_ready),
               "--insecure", *extra]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.port = self.http_port = 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.ready.exists() and self.http_ready.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited: see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} server not ready after {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        self.port = int(self.ready.read_text())
        self.http_port = int(self.http_ready.read_text())

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the server's ``dcrec_batch_size`` histogram."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        got = dict(re.findall(r"^dcrec_batch_size_(sum|count)\S* (\S+)$", text, re.M))
        return float(got.get("sum", 0.0)), float(got.get("count", 0.0))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _loadgen(address: str, histories: Path, clients: int, cfg: BenchConfig) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dcrec.cloud.load.loadgen", "--address", address, "--histories",
           str(histories), "--clients", str(clients), "--duration", str(cfg.duration_s),
           "--warmup", str(cfg.warmup_s), "--count", str(cfg.count)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=cfg.duration_s + cfg.warmup_s + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg: BenchConfig, say: Any = lambda s: None) -> dict[str, Any]:
    """Measure both settings at every client count; returns the rows and the summary."""
    from dcrec.cloud.models.backends import load_generator, read_manifest

    cfg.validate()
    manifest = read_manifest(cfg.model_dir)
    n_items = load_generator(cfg.model_dir).n_items
    workdir = Path(cfg.out_dir or tempfile.mkdtemp(prefix="dcrec-bench-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    hist_path = workdir / "histories.npz"
    save_histories(hist_path, _histories(cfg, n_items))
    workers = cfg.workers or max(max(cfg.levels), cfg.batch_max_size)
    common = ["--workers", str(workers), "--max-inflight", str(workers)]
    servers = {
        "no-batching": ServerProcess("no-batching", cfg.model_dir, common, workdir),
        "batching": ServerProcess("batching", cfg.model_dir, [
            *common, "--batch-max-size", str(cfg.batch_max_size),
            "--batch-max-wait-ms", str(cfg.batch_max_wait_ms)], workdir),
    }
    rows: list[dict[str, Any]] = []
    try:
        for s in servers.values():
            s.wait_ready()
        say(f"servers ready: {', '.join(f'{k} :{s.port}' for k, s in servers.items())}; "
            f"load average {os.getloadavg()[0]:.2f}")
        for r in range(cfg.rounds):
            for li, level in enumerate(cfg.levels):
                order = SETTINGS if (r + li) % 2 == 0 else SETTINGS[::-1]
                for setting in order:
                    srv = servers[setting]
                    load = os.getloadavg()[0]
                    before = srv.batch_stats()
                    res = _loadgen(f"127.0.0.1:{srv.port}", hist_path, level, cfg)
                    after = srv.batch_stats()
                    calls = after[1] - before[1]
                    res.update(setting=setting, round=r, load1=load,
                               load1_after=os.getloadavg()[0],
                               mean_batch=(after[0] - before[0]) / calls if calls else float("nan"))
                    rows.append(res)
                    say(f"round {r + 1}/{cfg.rounds} clients {level:3d} {setting:12s} "
                        f"{res['throughput']:8.1f} req/s p50 {res['p50_ms']:7.2f} ms "
                        f"p99 {res['p99_ms']:7.2f} ms batch {res['mean_batch']:5.1f} "
                        f"errors {res['errors']} load {load:.2f}")
    finally:
        for s in servers.values():
            s.stop()
    summary = summarize(rows, cfg.levels)
    result = {"config": {**asdict(cfg), "model_dir": str(cfg.model_dir), "out_dir": str(workdir),
                         "workers": workers},
              "backend": manifest.get("backend"), "version": manifest.get("version"),
              "cpus": os.cpu_count(), "rows": rows, "summary": summary}
    (workdir / "bench-serving.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(rows: list[dict[str, Any]], levels: tuple[int, ...]) -> list[dict[str, Any]]:
    """Median over rounds per (clients, setting), plus the batching/no-batching throughput ratio."""
    out = []
    for level in levels:
        entry: dict[str, Any] = {"clients": level}
        for setting in SETTINGS:
            rs = [r for r in rows if r["clients"] == level and r["setting"] == setting]
            if not rs:
                continue
            entry[setting] = {
                "throughput": float(np.median([r["throughput"] for r in rs])),
                "p50_ms": float(np.median([r["p50_ms"] for r in rs])),
                "p99_ms": float(np.median([r["p99_ms"] for r in rs])),
                "mean_batch": float(np.nanmedian([r["mean_batch"] for r in rs])),
                "errors": int(sum(sum(r["errors"].values()) for r in rs)),
                "load1": [round(r["load1"], 2) for r in rs],
            }
        if "batching" in entry and "no-batching" in entry:
            base = entry["no-batching"]["throughput"]
            entry["ratio"] = entry["batching"]["throughput"] / base if base else float("inf")
        out.append(entry)
    return out


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"model {result['version']} ({result['backend']}); {cfg['rounds']} interleaved rounds of "
        f"{cfg['duration_s']:g} s per cell, medians; batching: max size {cfg['batch_max_size']}, "
        f"max wait {cfg['batch_max_wait_ms']:g} ms; {cfg['workers']} handler threads; "
        f"{result['cpus']} CPUs",
        "",
        "| clients | setting | throughput (req/s) | p50 (ms) | p99 (ms) | mean batch | errors "
        "| load avg (1 min) per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in result["summary"]:
        for setting in SETTINGS:
            if setting not in e:
                continue
            m = e[setting]
            loads = ", ".join(f"{x:.1f}" for x in m["load1"])
            lines.append(f"| {e['clients']} | {setting} | {m['throughput']:.1f} | "
                         f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['mean_batch']:.1f} | "
                         f"{m['errors']} | {loads} |")
    lines.append("")
    for e in result["summary"]:
        if "ratio" in e:
            lines.append(f"- {e['clients']} clients: batching gives {e['ratio']:.2f}x the "
                         "throughput of no batching")
    return "\n".join(lines)
