"""Trace replay with a small result type: what ``dcrec demo`` and ``dcrec simulate`` print.

Each user with a live stream becomes a device with its own SQLite file,
seeded with the history the cloud already saw (the phone had those events
too), given a first list by a real ``GetCandidates`` call when the cloud last
saw the user, then fed the user's later events at their recorded times.
Before each event the list the device shows is scored against the item the
user actually chose next. This is the :class:`~dcrec.simulator.fleet.Fleet` engine
with a :class:`~dcrec.simulator.workload.TraceWorkload`; scenarios (faults,
networks, simulated users, reports) live in :mod:`dcrec.simulator.runner`.

Example::

    result = replay(split, "127.0.0.1:50051", reranker, ReplayConfig(workdir=Path("runs/sim")))
    result.summary()   # {'HR@10': ..., 'NDCG@10': ..., 'request_ratio': ..., 'events_per_s': ...}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dcrec.device.reranker import Reranker
from dcrec.device.runtime import RuntimeConfig
from dcrec.shared.splits import TimeSplit
from dcrec.shared.system import SYSTEM, SYSTEM_POLICY
from dcrec.simulator.fleet import Fleet, FleetConfig, FleetResult
from dcrec.simulator.metering import CloudAccess
from dcrec.simulator.workload import TraceWorkload


@dataclass(frozen=True)
class ReplayConfig:
    workdir: Path
    policy: str = SYSTEM_POLICY  # the system's request policy (dcrec.shared.system), or any by name
    threshold: float = SYSTEM.policy.threshold
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    k: int = 10  # cut-off of HR@k / NDCG@k of the shown list
    max_users: int | None = None  # replay only the first N users with a stream
    deadline_s: float = 2.0  # per GetCandidates call
    seed: int = 0
    bin_s: float = 86400.0  # metrics bins: a simulated day
    access: CloudAccess | None = None  # TLS and device tokens for a production server (--connect)


@dataclass
class ReplayResult:
    policy: str
    events: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0
    requests: int = 0  # during the stream (what the ratio counts)
    failed_requests: int = 0
    bootstrap_requests: int = 0  # each device's first list
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    devices: int = 0
    shown_empty: int = 0  # events before which the device had nothing to show
    fleet: FleetResult | None = None  # everything else: bins over time, bytes, latency, memory

    @property
    def request_ratio(self) -> float:
        return self.requests / self.events if self.events else 0.0

    def summary(self, k: int = 10) -> dict[str, float]:
        return {
            f"HR@{k}": self.hits / self.events if self.events else 0.0,
            f"NDCG@{k}": self.ndcg_sum / self.events if self.events else 0.0,
            "request_ratio": self.request_ratio,
            "events_per_s": self.events / self.seconds if self.seconds else 0.0,
            "events": float(self.events),
            "requests": float(self.requests),
            "failed_requests": float(self.failed_requests),
            "devices": float(self.devices),
        }

    @classmethod
    def from_fleet(cls, r: FleetResult) -> ReplayResult:
        t = r.series.total()
        return cls(r.policy, t.events, t.hits, t.ndcg, t.requests, t.failed, t.bootstrap,
                   Counter(t.reasons), r.wall_s, r.devices, t.empty, r)


def replay(split: TimeSplit, address: str, reranker: Reranker | None, config: ReplayConfig,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay every stream event through its device; returns fleet-wide metrics."""
    workload = TraceWorkload(split, "real", max_users=config.max_users, seed=config.seed)
    fleet = Fleet(workload, address, reranker, FleetConfig(
        workdir=config.workdir, policy=config.policy, threshold=config.threshold,
        runtime=config.runtime, k=config.k, deadline_s=config.deadline_s, seed=config.seed,
        bin_s=config.bin_s, access=config.access))

    def tick(fraction: float, events: int) -> None:
        assert progress is not None
        progress(int(fraction * 1000), 1000)

    return ReplayResult.from_fleet(fleet.run(tick if progress else None))
