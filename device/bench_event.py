"""The whole device event, timed: ``DeviceRuntime.record()`` end to end, with a stage breakdown.

``dcrec device bench-event`` replays real users' events (``--dataset``) through real
runtimes on one released model (ONNX file, config and neighbour index), each device
with its own SQLite store and an initial list, exactly what an app runs per event:
store append, rerank, catalogue pass, local list, device candidates, fusion, measure,
policy. With ``cloud_model`` a real cloud server runs on loopback and every device
has a client, so the events on which the policy asks include the request; the
report gives events with and without a request apart. Without it the runtime has
no client: a refresh the policy asks for fails at once, and a budgeted policy,
never served, keeps asking.

``--baseline CHECKOUT`` (repeatable) runs an older checkout of the project side by side:
each subject is its own worker process (:mod:`dcrec.device.bench_event_worker`) on the
same events, and the subjects take turns block by block, so a noisy machine slows
them alike and a speed-up is a ratio measured in one run. The lists each subject shows
are compared event by event.

Example::

    res = bench_event(Release.from_registry("runs/demo/registry"), sequences, events=3000,
                      baselines=[Path("/tmp/old-checkout")])
    print(format_report(res))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.shared.system import SYSTEM

WORKER = Path(__file__).with_name("bench_event_worker.py")


@dataclass(frozen=True)
class Release:
    """A released device model's files: the ONNX model, its config and the neighbour index."""

    model: Path
    config: Path
    neighbours: Path | None

    @classmethod
    def from_dir(cls, d: str | Path) -> Release:
        """A registry's version folder (``models/<version>``: model.onnx, config.json, neighbours.npz)."""
        d = Path(d)
        config = d / "config.json" if (d / "config.json").is_file() else d / "model.json"
        for f in (d / "model.onnx", config):
            if not f.is_file():
                raise FileNotFoundError(f"{f}: not found (a release folder holds model.onnx and config.json)")
        index = d / "neighbours.npz"
        return cls(d / "model.onnx", config, index if index.is_file() else None)

    @classmethod
    def from_registry(cls, root: str | Path) -> Release:
        """The live release of a device-model registry."""
        current = Path(root) / "CURRENT"
        if not current.is_file():
            raise FileNotFoundError(f"{current}: no live release in this registry")
        return cls.from_dir(Path(root) / "models" / current.read_text().strip())


@dataclass
class Subject:
    """One side of the comparison: this checkout (``root`` None) or an older one."""

    label: str
    root: Path | None
    totals: list[float] = field(default_factory=list)  # ms per event, no probes
    shown: list[list[int]] = field(default_factory=list)
    asked: list[bool] = field(default_factory=list)  # the policy asked the cloud on this event
    scores: list[list[float] | None] = field(default_factory=list)  # with compare_scores
    # from a second worker with the stage probes in (they cost about a microsecond each)
    staged_totals: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        a = np.asarray(self.totals)
        asked = np.asarray(self.asked, dtype=bool)
        out = {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
               "mean_ms": float(a.mean()), "events_per_s": float(1e3 / a.mean()), "events": int(a.size),
               "request_share": float(asked.mean()) if asked.size else 0.0}
        for name, part in (("no_request", a[~asked]), ("request", a[asked])):
            if part.size:
                out[f"{name}_median_ms"] = float(np.median(part))
                out[f"{name}_p99_ms"] = float(np.percentile(part, 99))
        return out

    def breakdown(self) -> dict[str, float]:
        """Mean milliseconds per event of each stage, and ``other`` (the rest of record())."""
        n = max(len(self.stages), 1)
        out: dict[str, float] = {}
        for s in self.stages:
            for k, v in s.items():
                out[k] = out.get(k, 0.0) + v / n
        out["other (runtime Python)"] = max(float(np.mean(self.staged_totals)) - sum(out.values()), 0.0)
        return out


@dataclass
class EventBench:
    subjects: list[Subject]
    config: dict[str, Any]
    devices: int
    block: int
    identical: dict[str, float]  # baseline label -> share of events with the same list shown
    # baseline label -> the largest |score difference| of any item ranked (compare_scores)
    score_diff: dict[str, float] = field(default_factory=dict)


def _label(root: Path | None) -> str:
    where = root or Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = ""
    if rev:
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        rev += " + uncommitted changes" if dirty else ""
    name = "this checkout" if root is None else str(root)
    return f"{name} ({rev})" if rev else name


def make_events(sequences: Sequence[np.ndarray], index_path: Path | None, devices: int,
                candidates: int, seed: int, path: Path) -> None:
    """The event file the workers replay: per device a pre-history, an initial list, a stream.

    Devices are the users with the longest histories (at least 20 events), drawn with
    ``seed``; each device's first 60 % are its history, the rest its timed stream. The
    initial list is the neighbour index's local list of that history (a cloud-shaped
    list of ``candidates`` items without asking a cloud).
    """
    from dcrec.shared.neighbours import NeighbourIndex

    if index_path is None:
        raise ValueError("bench-event needs a release with a neighbour index to make initial lists")
    index = NeighbourIndex.load(index_path)
    rng = np.random.default_rng(seed)
    eligible = [i for i, s in enumerate(sequences) if len(s) >= 20]
    if len(eligible) < devices:
        raise ValueError(f"only {len(eligible)} users have >= 20 events; ask for fewer --devices")
    chosen = rng.choice(eligible, size=devices, replace=False)
    arrays: dict[str, np.ndarray] = {"n_devices": np.array(devices)}
    for d, u in enumerate(chosen):
        seq = np.asarray(sequences[u], dtype=np.int64)
        cut = int(len(seq) * 0.6)
        pre = seq[:cut]
        items, scores = index.local_list(pre, candidates, exclude=set(pre.tolist()))
        arrays[f"pre{d}"] = pre
        arrays[f"list_items{d}"] = items.astype(np.int64)
        arrays[f"list_scores{d}"] = np.asarray(scores, dtype=np.float32)
        arrays[f"timed{d}"] = seq[cut:]
    np.savez(path, **arrays)


def _shim(root: Path, work: Path) -> Path:
    """For a checkout with the ``dcrec`` namespace: a folder whose ``dcrec/`` links to its packages."""
    shim = work / f"shim-{abs(hash(str(root)))}"
    (shim / "dcrec").mkdir(parents=True, exist_ok=True)
    for name in ("cloud", "device", "shared", "simulator", "protos"):
        if (root / name).is_dir() and not (shim / "dcrec" / name).exists():
            os.symlink(root / name, shim / "dcrec" / name)
    return shim


class _Cloud:
    """A real cloud server (``dcrec cloud serve``) on a free loopback port, for the bench's clients."""

    def __init__(self, model_dir: Path, work: Path) -> None:
        ready = work / "cloud-port"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(model_dir),
             "--address", "127.0.0.1:0", "--ready-file", str(ready), "--insecure"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"the cloud server for {model_dir} did not start: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the cloud server for {model_dir} was not ready within 120 s")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(ready.read_text())}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _start(subject: Subject, release: Release, events: Path, config: dict[str, Any], policy: str,
           threads: int, stages: bool, work: Path, connect: str | None,
           scores: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(WORKER), "--model", str(release.model), "--model-config",
           str(release.config), "--events", str(events), "--config", json.dumps(config),
           "--policy", policy, "--threads", str(threads)]
    if connect:
        cmd += ["--connect", connect]
    if scores:
        cmd.append("--scores")
    if release.neighbours is not None:
        cmd += ["--neighbours", str(release.neighbours)]
    if stages:
        cmd.append("--stages")
    if subject.root is not None:
        namespaced = "dcrec." in (subject.root / "pyproject.toml").read_text() if (
            subject.root / "pyproject.toml").is_file() else False
        cmd += ["--root", str(_shim(subject.root, work) if namespaced else subject.root)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{subject.label}: the bench worker did not start (exit {proc.wait()})")
    return proc


def bench_event(release: Release, sequences: Sequence[np.ndarray], events: int = 3000,
                warmup: int = 300, block: int = 100, devices: int = 32,
                baselines: Sequence[Path] = (), config: dict[str, Any] | None = None,
                policy: str = SYSTEM.policy.name, threads: int = 1, stages: bool = True,
                seed: int = 0, cloud_model: Path | None = None,
                compare_scores: bool = False) -> EventBench:
    """Time ``events`` events per subject after ``warmup`` untimed ones, in turns of ``block``;
    with ``cloud_model``, against a real cloud server serving it."""
    if events < 1 or warmup < 0 or block < 1 or devices < 1 or threads < 1:
        raise ValueError("events, block, devices and threads must be >= 1, warmup >= 0")
    config = dict(config or {})
    subjects = [Subject(_label(None), None)] + [Subject(_label(Path(b)), Path(b).resolve())
                                                for b in baselines]
    with tempfile.TemporaryDirectory(prefix="dcrec-bench-event-") as tmp:
        work = Path(tmp)
        from dcrec.device.runtime import RuntimeConfig

        candidates = RuntimeConfig(**config).candidates
        make_events(sequences, release.neighbours, devices, candidates, seed, work / "events.npz")
        cloud = _Cloud(cloud_model, work) if cloud_model is not None else None
        connect = cloud.address if cloud is not None else None
        # (subject, staged) per worker: the headline from plain workers, the breakdown from
        # probed ones, all taking turns
        workers = [(s, staged) for s in subjects for staged in ((False, True) if stages else (False,))]
        try:
            procs: list[subprocess.Popen[str]] = []
            for s, staged in workers:
                procs.append(_start(s, release, work / "events.npz", config, policy, threads, staged,
                                    work, connect, compare_scores and not staged))
            rounds = -(-(warmup + events) // block)
            for r in range(rounds):
                order = list(range(len(workers)))
                if r % 2:
                    order.reverse()  # alternate who goes first
                keep = max(0, min(block, (r + 1) * block - warmup))
                for i in order:
                    proc = procs[i]
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(f"run {block}\n")
                    proc.stdin.flush()
                    got = json.loads(proc.stdout.readline())
                    start = block - keep
                    s, staged = workers[i]
                    if staged:
                        s.staged_totals += got["total"][start:]
                        s.stages += got["stages"][start:]
                    else:
                        s.totals += got["total"][start:]
                        s.shown += got["shown"][start:]
                        s.asked += got["asked"][start:]
                        s.scores += got["scores"][start:]
        finally:
            for proc in procs:
                if proc.stdin is not None:
                    proc.stdin.close()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if cloud is not None:
                cloud.stop()
    for s in subjects:
        del s.totals[events:], s.shown[events:], s.asked[events:], s.staged_totals[events:], s.stages[events:]
    ours = subjects[0].shown
    identical = {s.label: float(np.mean([a == b for a, b in zip(ours, s.shown, strict=True)]))
                 for s in subjects[1:]}
    diff: dict[str, float] = {}
    if compare_scores:
        for s in subjects[1:]:
            worst = 0.0
            for a, b in zip(subjects[0].scores[:events], s.scores[:events], strict=True):
                if (a is None) != (b is None) or (a is not None and len(a) != len(b)):  # type: ignore[arg-type]
                    worst = float("inf")
                elif a is not None:
                    worst = max(worst, float(np.abs(np.subtract(a, b)).max(initial=0.0)))
            diff[s.label] = worst
    return EventBench(subjects, config, devices, block, identical, diff)


def format_report(res: EventBench) -> str:
    cur = res.subjects[0]
    lines = [f"{cur.summary()['events']} timed events over {res.devices} devices, turns of "
             f"{res.block} events; runtime config {json.dumps(res.config) if res.config else '(defaults)'}",
             "", "| subject | median ms | p99 ms | mean ms | events/s | median vs this checkout "
                 "| asked on | no request: median / p99 ms | request: median / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]

    def pair(m: dict[str, float], name: str) -> str:
        return f"{m[name + '_median_ms']:.3f} / {m[name + '_p99_ms']:.3f}" if name + "_median_ms" in m else "-"

    for s in res.subjects:
        m = s.summary()
        ratio = m["median_ms"] / cur.summary()["median_ms"]
        lines.append(f"| {s.label} | {m['median_ms']:.3f} | {m['p99_ms']:.3f} | {m['mean_ms']:.3f} | "
                     f"{m['events_per_s']:.0f} | {ratio:.2f}x | {m['request_share']:.1%} | "
                     f"{pair(m, 'no_request')} | {pair(m, 'request')} |")
    stages = sorted({k for s in res.subjects if s.stages for k in s.breakdown()})
    stages.sort(key=lambda k: k.startswith("other"))
    lines += ["", "mean ms per event by stage:", "",
              "| stage | " + " | ".join(s.label for s in res.subjects) + " |",
              "|---|" + "---|" * len(res.subjects)]
    parts = [s.breakdown() if s.stages else {} for s in res.subjects]
    for k in stages:
        lines.append(f"| {k} | " + " | ".join(f"{p[k]:.3f}" if k in p else "-" for p in parts) + " |")
    for label, share in res.identical.items():
        lines.append(f"\nlists shown identical to {label}: {share:.1%} of events")
        if label in res.score_diff:
            lines.append(f"largest device-score difference from {label}: {res.score_diff[label]:.2e}")
    return "\n".join(lines)
