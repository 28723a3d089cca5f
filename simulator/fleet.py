"""The fleet engine: many real device runtimes in one process, driven in simulated time.

Every device is a real :class:`~dcrec.device.runtime.DeviceRuntime` with its own
SQLite file, the shared ONNX session, and a cloud client on one of a few
shared gRPC connections (optionally through the :mod:`~dcrec.simulator.netem`
proxy). An asyncio dispatcher pops device events in simulated-time order
(a heap), sets the device's clock, and runs the event: score the list on
screen against what the user chooses (:mod:`~dcrec.simulator.workload`), record the
choice, let the runtime's policy ask the cloud. With ``concurrency > 1``
events of different devices run in worker threads at once, which overlaps
network waits (the emulated latency); one device's events never overlap.

Clocks: ``sim`` jumps from event to event (faster than real time, as fast as
the machine allows); ``wall`` paces events at ``speed`` simulated seconds per
wall second. Devices see only simulated time (back-off, list age, TTL).

Faults are scheduled in simulated time: ``cloud_down`` kills the server
process (SIGKILL) and restarts it when the window ends; ``network_down``
cuts the link at the proxy. At each fault's start and end the dispatcher
lets the events in flight finish before simulated time moves on, so every
call made inside a window sees the fault and none made outside it does: in
``sim`` mode other devices' events would otherwise carry the clock through
a ``network_down`` window in wall milliseconds, releasing calls stalled in a
``blackhole`` before their deadline. Devices beyond ``max_open`` are closed and
reopened from their SQLite file as needed (an app being evicted and
restarted), carrying their counters over.

Example::

    result = Fleet(workload, "127.0.0.1:50051", reranker, FleetConfig(workdir=Path("runs/f"))).run()
    result.summary()["HR@10"], result.series.rows()
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dcrec.device.client import Backoff, CloudClient
from dcrec.device.policy import RequestPolicy, resolve_policy
from dcrec.device.reranker import Reranker
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig, system_of
from dcrec.device.store import HISTORY_CACHE, DeviceStore
from dcrec.shared.contract import Reason
from dcrec.shared.system import SYSTEM, SYSTEM_POLICY
from dcrec.simulator.clock import DeviceClock, FleetClock, rss_mb
from dcrec.simulator.faults import CloudControl, Fault
from dcrec.simulator.metering import CloudAccess, MeteredClient, fleet_channels, wait_ready
from dcrec.simulator.metrics import TimeSeries, summarize
from dcrec.simulator.netem import LinkProfile, ProxyStats, ProxyThread
from dcrec.simulator.recovery import RecoverySpread
from dcrec.simulator.workload import DeviceSpec, Driver, Workload

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FleetConfig:
    workdir: Path
    policy: str = SYSTEM_POLICY  # the system's request policy (dcrec.shared.system), or any by name
    threshold: float = SYSTEM.policy.threshold
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    k: int = 10  # cut-off of HR@k / NDCG@k of the shown list; at most runtime.show
    deadline_s: float = 2.0  # per GetCandidates call, wall-clock
    seed: int = 0
    clock: Literal["sim", "wall"] = "sim"
    speed: float = 1.0  # wall clock only: simulated seconds per wall second
    concurrency: int = 1  # events in flight at once; > 1 overlaps emulated network latency
    channels: int = 2  # TCP connections the fleet's gRPC calls share
    max_open: int = 5000  # device stores open at once; each holds 3 file descriptors
    sqlite_cache_kib: int = 64  # per device; SQLite's 2 MiB default times 10,000 devices is 20 GB
    bin_s: float = 5.0  # simulated seconds per metrics bin
    recovery_spread: bool = True  # spread retries after an outage (see simulator/recovery.py)
    network: LinkProfile | None = None  # None and no network faults: devices dial the cloud directly
    faults: tuple[Fault, ...] = ()
    shard: int = 0  # this process runs devices with index % shards == shard
    shards: int = 1
    verify: bool = True  # count each store's events at the end (lost events must be 0)
    store_dir: Path | None = None  # device SQLite files; None = workdir/devices
    cleanup_stores: bool = False  # delete them after the run (stores on tmpfs hold RAM)
    # At the end of the run every device uploads its telemetry outbox (ReportTelemetry), as an
    # app does when idle: what the cloud learns from devices, failed requests included.
    upload_telemetry: bool = False
    access: CloudAccess | None = None  # TLS and device tokens for a production server (--connect)

    def validate(self) -> None:
        self.runtime.validate()
        if not 1 <= self.k <= self.runtime.show:
            raise ValueError(f"k must be in 1..runtime.show ({self.runtime.show}), got {self.k}")
        if self.clock not in ("sim", "wall") or self.speed <= 0:
            raise ValueError("fleet.clock must be sim or wall and fleet.speed > 0")
        if self.concurrency < 1 or self.channels < 1 or self.max_open < 1:
            raise ValueError("fleet.concurrency, fleet.channels and fleet.max_open must be >= 1")
        if not 0 <= self.shard < self.shards:
            raise ValueError(f"shard {self.shard} out of range for {self.shards} shards")
        for f in self.faults:
            f.validate()
        if self.network is not None:
            self.network.validate()


@dataclass
class FleetResult:
    policy: str
    series: TimeSeries
    devices: int
    wall_s: float  # from the first device online to the last event
    setup_s: float  # channels, proxy, worker threads
    lost_events: int  # events fed but not in the device's SQLite file (must be 0)
    deferred: int  # requests held back by recovery spreading
    evictions: int  # stores closed to stay under max_open
    rss_start_mb: float
    rss_peak_mb: float
    proxy: ProxyStats | None = None
    faults: tuple[Fault, ...] = ()
    cpu_s: float = 0.0  # CPU seconds this process (all its threads) used during the event loop
    cloud_cpu_s: float | None = None  # ... and the cloud server process, when the run started it
    telemetry_sent: int | None = None  # outbox records the cloud acknowledged (upload_telemetry)
    telemetry_pending: int | None = None  # ... and records left in the outboxes
    # device id -> (the data set's user behind it, events, hits, NDCG@k sum): per-user figures,
    # so two runs over the same users compare paired (dcrec.simulator.report.paired_per_device)
    per_device: dict[str, tuple[int, int, int, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        s = summarize(self.series)
        s.update({
            "devices": float(self.devices),
            "events_per_s": s["events"] / self.wall_s if self.wall_s else 0.0,
            "wall_s": self.wall_s,
            "lost_events": float(self.lost_events),
            "deferred_requests": float(self.deferred),
            "rss_peak_mb": self.rss_peak_mb,
            "memory_per_device_kib": (self.rss_peak_mb - self.rss_start_mb) * 1024 / self.devices
            if self.devices else 0.0,
        })
        if s["events"]:
            s["sim_cpu_ms_per_event"] = 1e3 * self.cpu_s / s["events"]
            if self.cloud_cpu_s is not None:
                s["cloud_cpu_ms_per_event"] = 1e3 * self.cloud_cpu_s / s["events"]
        if self.telemetry_sent is not None:
            s["telemetry_sent"] = float(self.telemetry_sent)
            s["telemetry_pending"] = float(self.telemetry_pending or 0)
        if self.proxy is not None:
            s["wire_bytes_up"] = float(self.proxy.bytes_up)
            s["wire_bytes_down"] = float(self.proxy.bytes_down)
        return s


@dataclass(eq=False)
class SimDevice:
    spec: DeviceSpec
    driver: Driver
    clock: DeviceClock
    client: MeteredClient
    policy: RequestPolicy
    path: Path
    runtime: DeviceRuntime | None = None
    fed: int = 0
    hits: int = 0  # events whose chosen item was in the shown top k
    ndcg: float = 0.0  # their discounted gain: per-device figures, paired across runs
    counters: tuple[int, int, int] = (0, 0, 0)  # requests, failed, events_since_request across reopen
    busy: bool = False


def _policy(name: str, threshold: float, seed: int, reranker: Reranker | None) -> RequestPolicy:
    """The device's policy: ``system`` is its release's (or the built-in system's) at its
    budget; budgeted ones get a per-device seed so runs repeat exactly."""
    return resolve_policy(name, system_of(reranker).policy, threshold, seed)


class Fleet:
    def __init__(self, workload: Workload, address: str, reranker: Reranker | None,
                 config: FleetConfig, cloud: CloudControl | None = None) -> None:
        config.validate()
        if any(f.kind == "cloud_down" for f in config.faults) and cloud is None:
            raise ValueError("a cloud_down fault needs the cloud process (start one, not --connect)")
        self.workload = workload
        self.address = address
        self.reranker = reranker
        self.config = config
        self.cloud = cloud
        self.clock = FleetClock(config.clock, config.speed)
        self.series = TimeSeries(0.0, config.bin_s, config.k)
        self._open: OrderedDict[int, SimDevice] = OrderedDict()
        self._lock = threading.Lock()  # worker threads open and evict devices
        self._evictions = 0
        self.root = Path(config.store_dir) if config.store_dir else Path(config.workdir) / "devices"
        self._template = self.root / ".empty.sqlite"

    # --- devices ------------------------------------------------------------------------------
    def _make_device(self, spec: DeviceSpec, address: str, channel: object, root: Path) -> SimDevice:
        cfg = self.config
        clock = DeviceClock(spec.start_s)
        rng = random.Random(f"{cfg.seed}:{spec.index}")
        policy = _policy(cfg.policy, cfg.threshold, cfg.seed * 1_000_003 + spec.index, self.reranker)
        spread = RecoverySpread(policy, rng=random.Random(f"spread:{cfg.seed}:{spec.index}")) \
            if cfg.recovery_spread else None
        token = cfg.access.token(spec.device_id) if cfg.access is not None else None
        inner = CloudClient(address, deadline_s=cfg.deadline_s, channel=channel,  # type: ignore[arg-type]
                            clock=clock, backoff=Backoff(rng=rng), token=token)
        client = MeteredClient(inner, clock, self.series.request, spread)
        return SimDevice(spec, self.workload.driver(spec, cfg.seed), clock, client,
                         spread or policy, root / f"{spec.device_id}.sqlite")

    def _runtime(self, dev: SimDevice) -> DeviceRuntime:
        """The device's runtime, (re)opening its store if it was closed."""
        with self._lock:
            # Checked under the lock: another worker may be evicting this device right now
            # (chosen while it was idle, just before this event made it busy); once the lock
            # is ours that eviction is complete and the store is reopened below.
            rt = dev.runtime
            if rt is not None:
                self._open.move_to_end(dev.spec.index)
                return rt
        fresh = not dev.path.exists()
        if fresh:  # a copy of an empty store: the schema is made once per fleet, not per device
            shutil.copyfile(self._template, dev.path)
        store = DeviceStore(dev.path, history_cache=max(HISTORY_CACHE, self.config.runtime.history_window))
        store.conn.execute(f"PRAGMA cache_size=-{self.config.sqlite_cache_kib}")
        if fresh and dev.spec.history.size:
            store.append_many(dev.spec.history, dev.spec.history_times)
        rt = DeviceRuntime(dev.spec.device_id, store, self.reranker, dev.client,  # type: ignore[arg-type]
                           dev.policy, self.config.runtime, dev.clock)
        rt.requests, rt.failed_requests, rt.events_since_request = dev.counters
        dev.runtime = rt
        with self._lock:
            self._open[dev.spec.index] = dev
            while len(self._open) > self.config.max_open:
                idx = next((i for i, d in self._open.items() if not d.busy and d is not dev), None)
                if idx is None:
                    break
                self._close(self._open.pop(idx))
                self._evictions += 1
        return rt

    def _close(self, dev: SimDevice) -> None:
        rt = dev.runtime
        if rt is None:
            return
        dev.counters = (rt.requests, rt.failed_requests, rt.events_since_request)
        rt.close()
        dev.runtime = None

    def _handle(self, dev: SimDevice, t: float, first: bool) -> None:
        """One step of one device at simulated time ``t`` (runs in a worker thread if concurrent)."""
        dev.clock.now = t
        rt = self._runtime(dev)
        if first:  # the device comes online and asks for its first list
            dev.client.bootstrap = True
            try:
                rt.refresh(Reason.COLD_START, t)
            finally:
                dev.client.bootstrap = False
            return
        shown = rt.recommend()[: self.config.k]
        age = rt.cached.age(t) if rt.cached is not None else 0.0
        resp = dev.driver.step(shown)
        self.series.event(t, resp.position, age, shown.size == 0)
        rt.record(resp.item, t)
        dev.fed += 1
        if 0 <= resp.position < self.config.k:
            dev.hits += 1
            dev.ndcg += 1.0 / math.log2(resp.position + 2)

    # --- faults ---------------------------------------------------------------------------
    def _fault_actions(self, proxy: ProxyThread | None,
                       channels: list[object]) -> list[tuple[float, str, Callable[[], None]]]:
        actions: list[tuple[float, str, Callable[[], None]]] = []
        for f in self.config.faults:
            if f.kind == "cloud_down":
                assert self.cloud is not None
                cloud = self.cloud

                def up(cloud: CloudControl = cloud) -> None:
                    cloud.restart()
                    if self.config.clock == "sim":
                        # Simulated time stands still while connections re-establish (wall seconds).
                        wait_ready(channels, 15.0, self.address)  # type: ignore[arg-type]

                actions += [(f.at_s, "cloud killed", cloud.kill), (f.at_s + f.duration_s, "cloud restarted", up)]
            elif f.kind == "network_down" and proxy is not None:
                link = proxy
                end = f.at_s + f.duration_s
                # Reconnected channels are awaited unless another fault is still under way then.
                clear = not any(g is not f and g.at_s <= end < g.at_s + g.duration_s
                                for g in self.config.faults)

                def back(link: ProxyThread = link, wait: bool = clear) -> None:
                    link.apply_outages()
                    if wait and self.config.clock == "sim":  # as after cloud_down: reconnects take wall time
                        wait_ready(channels, 15.0, self.address)  # type: ignore[arg-type]

                # The proxy follows the clock by itself; these hold the clock at the window's
                # edges while calls are in flight, and cut open connections as it opens.
                actions += [(f.at_s, "network down", link.apply_outages), (end, "network back", back)]
        return sorted(actions, key=lambda a: a[0])

    # --- the run -------------------------------------------------------------------------------
    def run(self, progress: Callable[[float, int], None] | None = None) -> FleetResult:
        """Run to the end; ``progress(fraction of simulated time done, events so far)``."""
        try:
            return asyncio.run(self._run(progress))
        finally:
            if self.config.cleanup_stores:
                shutil.rmtree(self.root, ignore_errors=True)

    async def _run(self, progress: Callable[[float, int], None] | None) -> FleetResult:
        cfg = self.config
        setup = time.perf_counter()
        root = self.root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        DeviceStore(self._template).close()
        outages = [f.window for f in cfg.faults if f.kind == "network_down"]
        proxy = None
        address = self.address
        if cfg.network is not None or outages:
            proxy = ProxyThread(self.address, cfg.network, outages, self.clock, seed=cfg.seed)
            address = proxy.start()
        tls = cfg.access.tls if cfg.access is not None else None
        if tls is not None and proxy is not None and not tls.server_name:
            # Through the proxy the channel dials 127.0.0.1: verify the name the cloud was given as.
            tls = replace(tls, server_name=self.address.rpartition(":")[0].strip("[]"))
        channels = fleet_channels(address, cfg.channels, tls=tls)
        specs = [s for s in self.workload.devices() if s.index % cfg.shards == cfg.shard]
        devices = {s.index: self._make_device(s, address, channels[s.index % len(channels)], root)
                   for s in specs}
        heap: list[tuple[float, int, int]] = [(s.start_s, 0, s.index) for s in specs]
        heapq.heapify(heap)
        actions = self._fault_actions(proxy, channels)  # type: ignore[arg-type]
        executor = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="device") \
            if cfg.concurrency > 1 else None
        loop = asyncio.get_running_loop()
        inflight: set[asyncio.Future[None]] = set()
        rss_start, _ = rss_mb()
        setup_s = time.perf_counter() - setup
        start = time.perf_counter()
        cpu0 = time.process_time()
        self.clock.start(heap[0][0] if heap else 0.0)
        horizon = self._horizon(devices.values())
        done = 0

        def schedule_next(dev: SimDevice) -> None:
            if dev.driver.next_time is not None:
                heapq.heappush(heap, (dev.driver.next_time, 1, dev.spec.index))

        errors: list[BaseException] = []

        def finished(dev: SimDevice, fut: asyncio.Future[None]) -> None:
            dev.busy = False
            inflight.discard(fut)
            error = None if fut.cancelled() else fut.exception()
            if error is None:
                schedule_next(dev)
            else:
                errors.append(error)  # re-raised below: a device that crashed must fail the run

        try:
            while (heap or inflight) and not errors:
                if not heap:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                t, kind, idx = heap[0]
                if actions and actions[0][0] <= t:
                    if inflight:  # let running events finish so the fault lands between events
                        await asyncio.wait(inflight)
                        continue
                    at, what, act = actions.pop(0)
                    self.clock.now = max(self.clock.now, at)
                    log.info("t=%.1fs: %s", at, what)
                    await loop.run_in_executor(None, act)
                    continue
                if cfg.clock == "wall" and (delay := self.clock.wall_delay(t)) > 0:
                    await asyncio.sleep(delay)
                dev = devices[idx]
                if dev.busy or (executor is not None and len(inflight) >= cfg.concurrency):
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                heapq.heappop(heap)
                self.clock.now = max(self.clock.now, t)
                done += 1
                if executor is None:
                    self._handle(dev, t, kind == 0)
                    schedule_next(dev)
                else:
                    dev.busy = True
                    fut = loop.run_in_executor(executor, self._handle, dev, t, kind == 0)
                    inflight.add(fut)
                    fut.add_done_callback(lambda f, d=dev: finished(d, f))
                if progress and done % 500 == 0:
                    progress(min(1.0, t / horizon) if horizon else 0.0, self.series_events())
            for fut in list(inflight):
                await asyncio.wait([fut])
            if errors:
                raise errors[0]
        finally:
            if executor is not None:
                executor.shutdown(wait=True)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            _, rss_peak = rss_mb()
            sent = pending = None
            if cfg.upload_telemetry and not errors:
                sent, pending = self._upload_telemetry(devices.values())
            for dev in devices.values():
                self._close(dev)
            self._template.unlink(missing_ok=True)
            for ch in channels:
                ch.close()  # type: ignore[attr-defined]
            if proxy is not None:
                proxy.stop()
        if progress:
            progress(1.0, self.series_events())
        lost = self._verify(devices.values()) if cfg.verify else 0
        deferred = sum(d.policy.deferred for d in devices.values() if isinstance(d.policy, RecoverySpread))
        return FleetResult(cfg.policy, self.series, len(devices), wall, setup_s, lost, deferred,
                           self._evictions, rss_start, rss_peak,
                           replace(proxy.stats) if proxy else None, cfg.faults, cpu,
                           telemetry_sent=sent, telemetry_pending=pending,
                           per_device={d.spec.device_id: (d.spec.user, d.fed, d.hits, d.ndcg)
                                       for d in devices.values()})

    def _upload_telemetry(self, devices: Iterable[SimDevice]) -> tuple[int, int]:
        """Each device flushes its outbox once, after its last event; (sent, pending).

        A device still backing off from failed calls waits that out first (on its own
        clock), as an app uploading at its next idle moment would.
        """
        sent = pending = 0
        for dev in devices:
            if dev.runtime is None and not dev.path.exists():
                continue
            dev.clock.now = max(dev.clock.now, dev.client.inner.backoff.until)
            rt = self._runtime(dev)
            result = rt.upload_telemetry(max_batches=100)
            if result.error:
                log.warning("%s: telemetry upload stopped: %s", dev.spec.device_id, result.error)
            sent += result.sent
            pending += result.pending
        return sent, pending

    def series_events(self) -> int:
        return sum(b.events for b in list(self.series.bins.values()))

    def _horizon(self, devices: Iterable[SimDevice]) -> float:
        """The simulated time the run ends at, for progress: the workload's duration or last trace event."""
        if self.workload.duration_s is not None:
            return self.workload.duration_s
        ends = [float(d.driver.times[-1]) for d in devices  # type: ignore[attr-defined]
                if getattr(d.driver, "times", None) is not None and d.driver.times.size]  # type: ignore[attr-defined]
        return max(ends, default=0.0)

    @staticmethod
    def _verify(devices: Iterable[SimDevice]) -> int:
        """Events fed to devices but missing from their SQLite files (read back from disk)."""
        lost = 0
        for dev in devices:
            if not dev.path.exists():
                continue
            # Read-only and immutable: nothing writes any more, and a plain connection's
            # close would checkpoint and sync each file again.
            conn = sqlite3.connect(f"file:{dev.path}?mode=ro&immutable=1", uri=True)
            try:
                n = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            finally:
                conn.close()
            lost += max(0, dev.spec.history.size + dev.fed - n)
        return lost

