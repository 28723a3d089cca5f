"""Running a scenario: a cloud (started or reached), the device model, one fleet per policy.

``run_scenario`` is what ``dcrec simulate --scenario`` calls: it builds the
workload the scenario describes, runs one fleet per policy (in this process,
or sharded over Ray with ``shards > 1``), checks the scenario's conditions
and writes the report. A fleet that produced no events is an error
(:class:`EmptyRunError`, after the report is written), not a pass.

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

import grpc
import numpy as np

from dcrec.device.client import CloudClient, CloudRejected, CloudUnauthorized, CloudUnavailable
from dcrec.device.reranker import Reranker
from dcrec.device.updates import load_installed, update
from dcrec.shared.contract import DeviceModel
from dcrec.shared.data import Dataset, load_dataset
from dcrec.shared.progress import Progress
from dcrec.shared.splits import TimeSplit, time_split
from dcrec.simulator.clock import process_cpu_s, single_threaded_blas
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.faults import CloudControl, Fault
from dcrec.simulator.fleet import Fleet, FleetConfig, FleetResult
from dcrec.simulator.metering import CloudAccess
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
    access: CloudAccess | None = None  # TLS and tokens to reach it (a started server needs none)


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


def fleet_config(sc: Scenario, policy: str, workdir: Path, shard: int = 0, shards: int = 1,
                 access: CloudAccess | None = None) -> FleetConfig:
    f = sc.fleet
    stores, cleanup = store_dir(f.store_dir, policy, shard)
    return FleetConfig(
        workdir=workdir, store_dir=stores, cleanup_stores=cleanup, policy=policy,
        threshold=sc.threshold, runtime=sc.runtime, k=f.k, deadline_s=f.deadline_s, seed=sc.seed,
        clock=f.clock, speed=f.speed, concurrency=f.concurrency, channels=f.channels,
        max_open=f.max_open, bin_s=f.bin_s, recovery_spread=f.recovery_spread,
        network=sc.network, faults=sc.faults, shard=shard, shards=shards,
        upload_telemetry=f.upload_telemetry, access=access)


MODEL_DEVICE_ID = "simulator"  # the device id the simulator fetches the device model as

# A cloud that answers one of these hands out no device model; anything else is a cloud that
# could not be reached or refused us, and the run would only measure failed calls.
_NO_MODEL = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


class _Fetch(CloudClient):
    """A device client that keeps the error :func:`~dcrec.device.updates.update` logs and swallows."""

    error: Exception | None = None

    def get_device_model(self, device_id: str, current_version: str = "",
                         current_sequence: int = 0) -> DeviceModel | None:
        try:
            return super().get_device_model(device_id, current_version, current_sequence)
        except (CloudUnavailable, CloudRejected) as e:  # the call failed (not a bad release)
            self.error = e
            raise


def fetch_reranker(address: str, model_dir: Path, access: CloudAccess | None = None
                   ) -> Reranker | None:
    """The device model as devices get it: from the cloud's registry (None when it hands out none).

    Raises ConnectionError naming ``address`` and the cause when the cloud cannot be reached
    (down, TLS handshake failed, client certificate refused) or refuses the device token.
    """
    access = access or CloudAccess()
    client = _Fetch(address, deadline_s=5.0, token=access.token(MODEL_DEVICE_ID), tls=access.tls)
    try:  # as a phone does: the model installed earlier, replaced only by a newer release
        reranker = update(client, MODEL_DEVICE_ID, model_dir, load_installed(model_dir))
    finally:
        client.close()
    e = client.error
    cause = e.__cause__ if e is not None else None
    code = cause.code() if isinstance(cause, grpc.RpcError) and hasattr(cause, "code") else None
    if e is None or code in _NO_MODEL:
        if e is not None:  # a refused release (FAILED_PRECONDITION) is worth a warning
            log.log(logging.INFO if code == grpc.StatusCode.NOT_FOUND else logging.WARNING,
                    "cloud at %s hands out no device model: %s", address, e)
        return reranker
    if isinstance(e, CloudUnauthorized):
        raise ConnectionError(f"the cloud at {address} refused the simulator's credentials ({e}); "
                              "the simulator issues each device its token with --auth-secret, "
                              "which must be the server's own secret file") from e
    if isinstance(e, CloudRejected):
        raise ConnectionError(f"the cloud at {address} refused the device-model request: {e}") from e
    hint = ""
    if code == grpc.StatusCode.UNAVAILABLE and "refused" not in str(e).lower():
        # A TLS server closes a plaintext connection, a mutual-TLS one a connection without an
        # accepted client certificate; gRPC only says the socket closed.
        if access.tls is None:
            hint = " (if the server uses TLS, give --tls-ca, and --tls-cert/--tls-key for mutual TLS)"
        elif access.tls.cert_file is None:
            hint = " (a server with mutual TLS needs a client certificate: --tls-cert/--tls-key)"
    raise ConnectionError(f"cannot reach the cloud at {address}: {e}{hint}") from e


def run_fleet(sc: Scenario, policy: str, address: str, workdir: Path, cloud: CloudControl | None = None,
              shard: int = 0, shards: int = 1, progress: bool = False,
              access: CloudAccess | None = None) -> FleetResult:
    """One policy's fleet (or one shard of it) against the cloud at ``address``."""
    single_threaded_blas()
    workload = scenario_workload(sc)
    reranker = fetch_reranker(address, Path(workdir) / "model", access)
    if reranker is None:
        log.warning("the cloud at %s hands out no device model; devices show the cloud's order",
                    address)
    bar = Progress(f"simulate {policy:>12}", 1000) if progress else None

    def tick(fraction: float, events: int) -> None:
        assert bar is not None
        bar.update(int(fraction * 1000), f"{events} events")

    fleet = Fleet(workload, address, reranker,
                  fleet_config(sc, policy, workdir, shard, shards, access), cloud)
    result = fleet.run(tick if bar else None)
    if bar:
        bar.close()
    return result


class EmptyRunError(ValueError):
    """A fleet produced no events: nothing was measured, so no check can pass."""


def _recovery_check(sc: Scenario, r: FleetResult, f: Fault) -> tuple[str, float | None]:
    """(name, peak / steady request rate) around fault ``f``; None when it cannot be measured.

    Scenario validation refuses the settings that leave no steady window (a warm-up that
    ends after the fault, no whole bin before it or after it); what is left here is a run
    whose bins there hold no events, or no requests before the fault.
    """
    end = f.at_s + f.duration_s
    steady, peak = recovery_peak(r.series, f.at_s, end, sc.workload.warmup_s)
    name = f"request peak after {f.kind} / steady"
    if math.isnan(steady):
        return (f"{name} (not measured: no metrics bin between the warm-up's end at "
                f"{sc.workload.warmup_s:g} s and the fault at {f.at_s:g} s)"), None
    if math.isnan(peak):
        return f"{name} (not measured: no metrics bin after the fault ends at {end:g} s)", None
    name = f"{name} (steady {steady:.2f}/s, peak {peak:.2f}/s)"
    if steady > 0:
        return name, peak / steady
    if peak == 0:
        return name, 0.0  # no requests before or after: no herd
    return f"{name}: not measured, no requests before the fault to compare with", None


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
            name, ratio = _recovery_check(sc, r, f)
            if ratio is None:  # a check that measured nothing fails, with the reason in its name
                out[f"{r.policy}: {name}"] = {"value": None, "limit": c.max_recovery_ratio, "ok": False}
            else:
                check(name, ratio, c.max_recovery_ratio)
    return out


def _refuse_empty(sc: Scenario, results: list[FleetResult], report: Path) -> None:
    """Raise :class:`EmptyRunError` when a policy's fleet produced no events."""
    empty = [r.policy for r in results if not r.summary()["events"]]
    if not empty:
        return
    w = sc.workload
    size = f"{w.devices} devices" if w.kind == "closed_loop" else f"max_users {w.max_users}"
    raise EmptyRunError(
        f"scenario {sc.name}: the {', '.join(empty)} fleet produced 0 events, so nothing was "
        f"measured and no check can pass (workload {w.kind}, {size}, duration_s {w.duration_s}; "
        f"see workload.duration_s, the user count and surges' join_fraction); report: {report}")


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

                result = run_sharded(sc, policy, address, workdir, shards, ray_address,
                                     access=models.access)
            else:
                result = run_fleet(sc, policy, address, workdir, ManagedCloud(proc) if proc else None,
                                   progress=progress, access=models.access)
            if cpu_before is not None and proc is not None and proc.proc is not None \
                    and proc.proc.pid == pid:  # a restarted server's CPU is not comparable
                after = process_cpu_s(pid)
                result.cloud_cpu_s = None if after is None else after - cpu_before
            outcome.results.append(result)
            outcome.checks.update(evaluate_checks(sc, result))
            if not result.summary()["events"]:
                break  # the policies share the workload: the others would be empty too
    finally:
        if proc is not None:
            proc.stop()
    outcome.report = write_report(out, sc, outcome.results, outcome.checks)
    print(f"report: {outcome.report}", file=sys.stderr)
    _refuse_empty(sc, outcome.results, outcome.report)
    return outcome
