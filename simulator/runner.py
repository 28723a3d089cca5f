"""Running a scenario: a cloud (started or reached), the device model, one fleet per policy.

``run_scenario`` is what ``dcrec simulate --scenario`` calls: it builds the
workload the scenario describes, runs one fleet per policy (in this process,
or sharded over Ray with ``shards > 1``), checks the scenario's conditions
and writes the report.

Example::

    outcome = run_scenario(load_scenario("steady"), Models(cloud_model=Path("runs/demo/cloud"),
                           registry=Path("runs/demo/registry")), Path("runs/sim/steady"))
    outcome.report     # runs/sim/steady/report.html
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcrec.device.client import CloudClient
from dcrec.device.reranker import Reranker
from dcrec.device.updates import load_installed, update
from dcrec.shared.data import Dataset, load_dataset
from dcrec.shared.progress import Progress
from dcrec.shared.splits import TimeSplit, time_split
from dcrec.simulator.clock import process_cpu_s, single_threaded_blas
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.faults import CloudControl
from dcrec.simulator.fleet import Fleet, FleetConfig, FleetResult
from dcrec.simulator.metrics import recovery_peak
from dcrec.simulator.report import write_report
from dcrec.simulator.scenario import Scenario, WorkloadSpec
from dcrec.simulator.users import LatentInterestUsers, LatentUserConfig, item_vectors
from dcrec.simulator.workload import Surge, TraceWorkload, UserWorkload, Workload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    cloud_model: Path | None = None  # start a server for this model directory...
    registry: Path | None = None  # ...handing out device models from this registry
    connect: str | None = None  # ...or use a server already running here


@dataclass
class Outcome:
    results: list[FleetResult]
    checks: dict[str, dict[str, object]] = field(default_factory=dict)
    report: Path | None = None

    @property
    def passed(self) -> bool:
        return all(bool(c["ok"]) for c in self.checks.values())


class ManagedCloud:
    """A :class:`CloudProcess` as the fleet's :class:`CloudControl` (kill, restart on the same port)."""

    def __init__(self, proc: CloudProcess) -> None:
        self.proc = proc

    def kill(self) -> None:
        self.proc.kill()

    def restart(self) -> None:
        self.proc.start(port=self.proc.port)


@functools.lru_cache(maxsize=4)
def _data(dataset: str, cloud_fraction: float) -> tuple[Dataset, TimeSplit]:
    ds = load_dataset(dataset)
    return ds, time_split(ds, cloud_fraction)


def scenario_workload(sc: Scenario) -> Workload:
    """The scenario's workload (cached: runs of several policies share it; drivers hold all state)."""
    return _workload(sc.dataset, sc.cloud_fraction, sc.workload, sc.users, sc.seed, sc.surges)


@functools.lru_cache(maxsize=4)
def _workload(dataset: str, cloud_fraction: float, w: WorkloadSpec, users: LatentUserConfig,
              seed: int, surges: tuple[Surge, ...]) -> Workload:
    ds, split = _data(dataset, cloud_fraction)
    return build_workload(Scenario(name="", workload=w, users=users, seed=seed, surges=surges),
                          ds, split)


def build_workload(sc: Scenario, ds: Dataset, split: TimeSplit) -> Workload:
    w = sc.workload
    if w.kind == "trace":
        timing = w.timing if w.timing != "auto" else ("real" if ds.has_timestamps else "synthetic")
        if timing == "real" and not ds.has_timestamps:
            raise ValueError(f"{ds.name} has no timestamps: use workload.timing = \"synthetic\"")
        return TraceWorkload(split, timing, w.mean_gap_s, w.time_scale, w.max_users, sc.seed,
                             sc.surges, w.duration_s)
    seqs = split.cloud_sequences()
    vectors = item_vectors(seqs, ds.n_items, sc.users.dim, seed=sc.seed)
    popularity = np.bincount(split.cloud.item, minlength=ds.n_items + 1)
    model = LatentInterestUsers(vectors, popularity, sc.users)
    assert w.duration_s is not None
    return UserWorkload(split, model, w.devices, w.duration_s, sc.seed, sc.surges)


def store_dir(spec: str, policy: str, shard: int) -> tuple[Path | None, bool]:
    """Where device files go, and whether to delete them after the run.

    ``""``: beside the report (kept). ``"tmpfs"``: a fresh folder in
    /dev/shm, deleted after the run: a fleet of phones does not queue its
    fsyncs on one disk, and on one shared disk the per-device open, seed and
    close (about 15 ms of fsync each) would dominate a large run. Anything
    else: that folder (kept).
    """
    if not spec:
        return None, False
    if spec == "tmpfs":
        shm = Path("/dev/shm")
        if shm.is_dir():
            return shm / f"dcrec-fleet-{os.getpid()}-{policy}-{shard}", True
        log.warning("no /dev/shm here; device stores go beside the report")
        return None, False
    return Path(spec) / policy / f"shard{shard}", False


def fleet_config(sc: Scenario, policy: str, workdir: Path, shard: int = 0, shards: int = 1) -> FleetConfig:
    f = sc.fleet
    stores, cleanup = store_dir(f.store_dir, policy, shard)
    return FleetConfig(
        workdir=workdir, store_dir=stores, cleanup_stores=cleanup, policy=policy,
        threshold=sc.threshold, runtime=sc.runtime, k=f.k, deadline_s=f.deadline_s, seed=sc.seed,
        clock=f.clock, speed=f.speed, concurrency=f.concurrency, channels=f.channels,
        max_open=f.max_open, bin_s=f.bin_s, recovery_spread=f.recovery_spread,
        network=sc.network, faults=sc.faults, shard=shard, shards=shards,
        upload_telemetry=f.upload_telemetry)


def fetch_reranker(address: str, model_dir: Path) -> Reranker | None:
    """The device model as devices get it: from the cloud's registry (None when it hands out none)."""
    client = CloudClient(address, deadline_s=5.0)
    try:  # as a phone does: the model installed earlier, replaced only by a newer release
        return update(client, "simulator", model_dir, load_installed(model_dir))
    finally:
        client.close()


def run_fleet(sc: Scenario, policy: str, address: str, workdir: Path, cloud: CloudControl | None = None,
              shard: int = 0, shards: int = 1, progress: bool = False) -> FleetResult:
    """One policy's fleet (or one shard of it) against the cloud at ``address``."""
    single_threaded_blas()
    workload = scenario_workload(sc)
    reranker = fetch_reranker(address, Path(workdir) / "model")
    if reranker is None:
        log.warning("no device model from the cloud; devices show the cloud's order")
    bar = Progress(f"simulate {policy:>12}", 1000) if progress else None

    def tick(fraction: float, events: int) -> None:
        assert bar is not None
        bar.update(int(fraction * 1000), f"{events} events")

    fleet = Fleet(workload, address, reranker, fleet_config(sc, policy, workdir, shard, shards), cloud)
    result = fleet.run(tick if bar else None)
    if bar:
        bar.close()
    return result


def evaluate_checks(sc: Scenario, r: FleetResult) -> dict[str, dict[str, object]]:
    c = sc.checks
    s = r.summary()
    out: dict[str, dict[str, object]] = {}

    def check(name: str, value: float, limit: float | None, at_most: bool = True) -> None:
        if limit is None:
            return
        ok = (value <= limit) if at_most else (value >= limit)
        out[f"{r.policy}: {name}"] = {"value": round(value, 4), "limit": limit, "ok": bool(ok)}

    check("lost events", s["lost_events"], c.max_lost_events)
    check("events with nothing on screen", s["shown_empty"], c.max_shown_empty)
    check("events per second", s["events_per_s"], c.min_events_per_s, at_most=False)
    if "telemetry_pending" in s:
        check("telemetry records left in outboxes", s["telemetry_pending"], c.max_telemetry_pending)
    if c.max_recovery_ratio is not None:
        for f in sc.faults:
            steady, peak = recovery_peak(r.series, f.at_s, f.at_s + f.duration_s, sc.workload.warmup_s)
            ratio = peak / steady if steady and not math.isnan(steady) else math.inf
            check(f"request peak after {f.kind} / steady (steady {steady:.2f}/s, peak {peak:.2f}/s)",
                  ratio, c.max_recovery_ratio)
    return out


def run_scenario(sc: Scenario, models: Models, out: Path, shards: int = 1,
                 ray_address: str | None = None, progress: bool = True) -> Outcome:
    if not models.connect and not models.cloud_model:
        raise ValueError("give a cloud model to serve (--models DIR or --cloud-model) or --connect host:port")
    if models.cloud_model is not None and not Path(models.cloud_model).is_dir():
        raise FileNotFoundError(f"{models.cloud_model}: no cloud model here (run `dcrec demo` first, "
                                "or train one with `dcrec cloud train`)")
    if shards > 1 and any(f.kind == "cloud_down" for f in sc.faults):
        raise ValueError("cloud_down faults need one process (the driver owns the server); "
                         "use network_down faults with --shards")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    if not models.connect:
        assert models.cloud_model is not None
        proc = CloudProcess(models.cloud_model, models.registry, ttl=sc.ttl_s).start()
    address = models.connect or proc.address  # type: ignore[union-attr]
    outcome = Outcome([])
    try:
        for policy in sc.policies:
            workdir = out / policy
            pid = proc.proc.pid if proc is not None and proc.proc is not None else None
            cpu_before = process_cpu_s(pid) if pid else None
            if shards > 1:
                from dcrec.simulator.distributed import run_sharded

                result = run_sharded(sc, policy, address, workdir, shards, ray_address)
            else:
                result = run_fleet(sc, policy, address, workdir, ManagedCloud(proc) if proc else None,
                                   progress=progress)
            if cpu_before is not None and proc is not None and proc.proc is not None \
                    and proc.proc.pid == pid:  # a restarted server's CPU is not comparable
                after = process_cpu_s(pid)
                result.cloud_cpu_s = None if after is None else after - cpu_before
            outcome.results.append(result)
            outcome.checks.update(evaluate_checks(sc, result))
    finally:
        if proc is not None:
            proc.stop()
    outcome.report = write_report(out, sc, outcome.results, outcome.checks)
    print(f"report: {outcome.report}", file=sys.stderr)
    return outcome
