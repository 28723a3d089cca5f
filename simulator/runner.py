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

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from dcrec.simulator.clock import process_cpu_s
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.faults import Fault
from dcrec.simulator.fleet import FleetResult
from dcrec.simulator.fleet_run import run_fleet
from dcrec.simulator.metering import CloudAccess
from dcrec.simulator.metrics import recovery_peak
from dcrec.simulator.report import write_report
from dcrec.simulator.scenario import Scenario

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
    _refuse_empty(sc, outcome.results, outcome.report)
    return outcome
