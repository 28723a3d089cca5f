"""Trace replay: a fleet of real device runtimes replaying users' streams against the cloud.

Each user becomes a device with its own SQLite file, seeded with the history
the cloud already saw (the phone had those events too), given a first list
by a real ``GetCandidates`` call, then fed the user's later events in global
time order. Before each event the list the device shows is scored against the
item the user actually chose next.

Example::

    result = replay(split, "127.0.0.1:50051", reranker, ReplayConfig(workdir=Path("runs/sim")))
    result.summary()   # {'HR@10': ..., 'NDCG@10': ..., 'request_ratio': ..., 'events_per_s': ...}
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from device.client import Backoff, CloudClient
from device.policy import make_policy
from device.reranker import Reranker
from device.runtime import DeviceRuntime, RuntimeConfig
from device.store import DeviceStore
from shared.contract import Reason
from shared.splits import TimeSplit

log = logging.getLogger(__name__)


class SimClock:
    """The simulation's clock: the timestamp of the event being replayed (seconds)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class ReplayConfig:
    workdir: Path
    policy: str = "disagreement"
    threshold: float = 0.95
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    k: int = 10  # cut-off of HR@k / NDCG@k of the shown list
    max_users: int | None = None  # replay only the first N users with a stream
    deadline_s: float = 2.0  # per GetCandidates call
    seed: int = 0


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


def build_fleet(split: TimeSplit, channel: grpc.Channel, address: str, reranker: Reranker | None,
                config: ReplayConfig, clock: SimClock) -> dict[int, DeviceRuntime]:
    """One runtime per user with a stream; stores seeded with the cloud-side history."""
    root = Path(config.workdir) / "devices"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cloud_offsets = split.cloud.offsets(split.n_users)
    stream_counts = np.bincount(split.stream.user, minlength=split.n_users)
    users = np.flatnonzero(stream_counts > 0)
    if config.max_users is not None:
        users = users[: config.max_users]
    fleet: dict[int, DeviceRuntime] = {}
    for u in users:
        u = int(u)
        store = DeviceStore(root / f"u{u}.sqlite")
        lo, hi = cloud_offsets[u], cloud_offsets[u + 1]
        store.append_many(split.cloud.item[lo:hi], split.cloud.time[lo:hi])
        client = CloudClient(address, deadline_s=config.deadline_s, channel=channel, clock=clock,
                             backoff=Backoff(rng=np.random.default_rng(config.seed + u)))  # type: ignore[arg-type]
        policy = make_policy(config.policy, config.threshold)
        fleet[u] = DeviceRuntime(f"u{u}", store, reranker, client, policy, config.runtime, clock)
    return fleet


def replay(split: TimeSplit, address: str, reranker: Reranker | None, config: ReplayConfig,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay every stream event through its device; returns fleet-wide metrics."""
    clock = SimClock()
    channel = grpc.insecure_channel(address, options=[("grpc.enable_retries", 1)])
    try:
        grpc.channel_ready_future(channel).result(timeout=10.0)
    except grpc.FutureTimeoutError as e:
        raise ConnectionError(f"cloud server at {address} not reachable within 10 s") from e
    result = ReplayResult(policy=config.policy)
    fleet = build_fleet(split, channel, address, reranker, config, clock)
    result.devices = len(fleet)
    cloud_offsets = split.cloud.offsets(split.n_users)
    for u, rt in fleet.items():  # first lists, as of the cloud's last view of the user
        hi = cloud_offsets[u + 1]
        clock.now = float(split.cloud.time[hi - 1]) if hi > cloud_offsets[u] else 0.0
        if rt.refresh(Reason.COLD_START, clock.now):
            result.bootstrap_requests += 1

    users = split.stream.user
    keep = np.isin(users, np.fromiter(fleet, dtype=np.int64))
    order = np.lexsort((np.arange(users.size), split.stream.time, ~keep))[: int(keep.sum())]
    total = order.size
    discounts = 1.0 / np.log2(np.arange(config.k) + 2.0)
    start = time.perf_counter()
    for n, e in enumerate(order):
        u, item, ts = int(users[e]), int(split.stream.item[e]), float(split.stream.time[e])
        rt = fleet[u]
        clock.now = ts
        shown = rt.recommend()[: config.k]
        if shown.size == 0:
            result.shown_empty += 1
        pos = np.flatnonzero(shown == item)
        if pos.size:
            result.hits += 1
            result.ndcg_sum += float(discounts[pos[0]])
        sent_before = rt.requests
        rec = rt.record(item, ts)
        if rt.requests > sent_before and rec.request is not None:  # a call really went out
            result.requests += 1
            result.reasons[rec.request.label] += 1
            if not rec.request_ok:
                result.failed_requests += 1
        result.events += 1
        if progress and (n % 500 == 0 or n == total - 1):
            progress(n + 1, total)
    result.seconds = time.perf_counter() - start
    for rt in fleet.values():
        rt.close()
    channel.close()
    return result
