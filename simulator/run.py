"""Wiring for ``dcrec simulate``: a server (started or reached), the device model, the fleet runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dcrec.device.runtime import system_of
from dcrec.shared.data import load_dataset
from dcrec.shared.progress import Progress
from dcrec.shared.splits import time_split
from dcrec.shared.system import SYSTEM, SYSTEM_POLICY
from dcrec.simulator.cloudproc import CloudProcess
from dcrec.simulator.fleet_run import fetch_reranker
from dcrec.simulator.metering import CloudAccess
from dcrec.simulator.replay import ReplayConfig, ReplayResult, replay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationSpec:
    dataset: str = "ml-100k"
    cloud_fraction: float = 0.8
    cloud_model: Path | None = None  # start a server for this model directory...
    registry: Path | None = None  # ...handing out device models from this registry
    connect: str | None = None  # ...or use a server already running here
    access: CloudAccess | None = None  # TLS and device tokens to reach it (--connect only)
    workdir: Path = Path("runs/simulate")
    policies: list[str] | None = None
    threshold: float = SYSTEM.policy.threshold
    alpha: float | None = None  # None: the system's
    max_users: int | None = None
    ttl: float = 86400.0


def run_simulations(spec: SimulationSpec, say: Callable[[str], None] = log.info) -> list[ReplayResult]:
    """One replay per policy; ``say`` gets the progress lines (the command line shows them)."""
    if not spec.connect and not spec.cloud_model:
        raise ValueError("give --cloud-model (to start a server) or --connect host:port")
    ds = load_dataset(spec.dataset)
    split = time_split(ds, spec.cloud_fraction)
    say(f"simulate: {ds.describe()}; {len(split.stream)} stream events")
    server = None
    if not spec.connect:
        assert spec.cloud_model is not None
        server = CloudProcess(spec.cloud_model, spec.registry, ttl=spec.ttl).start()
    address = spec.connect or server.address  # type: ignore[union-attr]
    results = []
    try:
        # Raises ConnectionError (naming the address and the cause) for a cloud that cannot
        # be reached or refuses the credentials; None is a cloud that hands out no model.
        reranker = fetch_reranker(address, Path(spec.workdir) / "model", spec.access)
        if reranker is None:
            say(f"simulate: the cloud at {address} hands out no device model; devices show "
                "the cloud's order")
        device = system_of(reranker).device  # what the release's devices run (else the built-in system)
        runtime = device if spec.alpha is None else replace(device, alpha=spec.alpha)
        for policy in spec.policies or [SYSTEM_POLICY]:
            bar = Progress(f"simulate {policy:>12}", 1)

            def tick(done: int, total: int, bar: Progress = bar) -> None:
                bar.total = total
                bar.update(done)

            cfg = ReplayConfig(workdir=Path(spec.workdir) / policy, policy=policy,
                               threshold=spec.threshold, max_users=spec.max_users,
                               runtime=runtime,
                               access=spec.access)
            results.append(replay(split, address, reranker, cfg, progress=tick))
            bar.close()
    finally:
        if server is not None:
            server.stop()
    return results


def format_table(results: list[ReplayResult], k: int = 10) -> str:
    head = (f"| policy | HR@{k} | NDCG@{k} | request ratio | requests | events | events/s | "
            "devices | reasons |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        s = r.summary(k)
        reasons = ", ".join(f"{k_}:{v}" for k_, v in sorted(r.reasons.items())) or "-"
        lines.append(f"| {r.policy} | {s[f'HR@{k}']:.4f} | {s[f'NDCG@{k}']:.4f} | "
                     f"{s['request_ratio']:.3f} | {r.requests} | {r.events} | "
                     f"{s['events_per_s']:.0f} | {r.devices} | {reasons} |")
    return "\n".join(lines)

