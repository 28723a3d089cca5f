"""Scale-out on Ray: the same fleet sharded across processes (or machines).

Shard ``i`` of ``n`` runs the devices whose index is ``i`` modulo ``n``,
against the same cloud, with the same seed. Every device draws from its own
random streams and the cloud answers a request from its content alone, so
each device does exactly what it does in a single-process run; the shards'
metrics (bins of simulated time, all additive) merge into the single-process
figures. Wall-clock figures (latency, events per second) are the exception.

``ray_address=None`` starts a local cluster (no dashboard); pass a cluster's
address (``ray://head:10001`` or ``auto``) to use a real one. Shards fetch the
device model from the cloud like devices do, and load the data set
themselves, so workers need the package installed and the cloud reachable at
``address`` (not 127.0.0.1 across machines: serve on a routable address).

Example::

    result = run_sharded(load_scenario("steady"), "disagreement", "10.0.0.5:50051",
                         Path("runs/sim/steady/disagreement"), shards=8, ray_address="auto")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dcrec.simulator.fleet import FleetResult
from dcrec.simulator.metering import CloudAccess
from dcrec.simulator.metrics import TimeSeries
from dcrec.simulator.netem import ProxyStats
from dcrec.simulator.scenario import Scenario

log = logging.getLogger(__name__)


def _shard(sc: Scenario, policy: str, address: str, workdir: str, shard: int, shards: int,
           access: CloudAccess | None = None) -> FleetResult:
    from dcrec.simulator.fleet_run import run_fleet

    return run_fleet(sc, policy, address, Path(workdir) / f"shard{shard}", None, shard, shards,
                     access=access)


def merge_results(parts: Sequence[FleetResult]) -> FleetResult:
    """One result from shard results: bins summed, devices and memory added, wall time the longest."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    series = TimeSeries(first.series.t0, first.series.bin_s, first.series.k)
    for p in parts:
        series.merge(p.series)
    proxies = [p.proxy for p in parts if p.proxy is not None]
    proxy = None
    if proxies:
        proxy = ProxyStats()
        for s in proxies:
            for k, v in vars(s).items():
                setattr(proxy, k, getattr(proxy, k) + v)
    return replace(
        first, series=series, devices=sum(p.devices for p in parts),
        wall_s=max(p.wall_s for p in parts), setup_s=max(p.setup_s for p in parts),
        lost_events=sum(p.lost_events for p in parts), deferred=sum(p.deferred for p in parts),
        evictions=sum(p.evictions for p in parts), rss_start_mb=sum(p.rss_start_mb for p in parts),
        rss_peak_mb=sum(p.rss_peak_mb for p in parts), proxy=proxy, cpu_s=sum(p.cpu_s for p in parts),
        per_device={d: v for p in parts for d, v in p.per_device.items()})


def run_sharded(sc: Scenario, policy: str, address: str, workdir: Path, shards: int,
                ray_address: str | None = None, cpus_per_shard: float = 1.0,
                access: CloudAccess | None = None) -> FleetResult:
    """Run ``policy``'s fleet as ``shards`` Ray tasks and merge their metrics.

    ``access`` travels to the workers as file paths: each reads the TLS files and the auth
    secret at the same paths on its own machine.
    """
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("sharded runs need Ray: pip install 'dcrec[fleet]' (ray==2.60.0)") from e
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    started = False
    if not ray.is_initialized():
        # Workers import the installed ``dcrec`` package, like the driver.
        kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": False}
        if ray_address is None:
            kwargs["num_cpus"] = max(shards, os.cpu_count() or 1)
        ray.init(address=ray_address, **kwargs)
        started = True
    try:
        task = ray.remote(num_cpus=cpus_per_shard, max_retries=0)(_shard)
        refs = [task.remote(sc, policy, address, str(workdir), i, shards, access)
                for i in range(shards)]
        parts = ray.get(refs)
    finally:
        if started:
            ray.shutdown()
    log.info("merged %d shards of %s", shards, policy)
    return merge_results(parts)
