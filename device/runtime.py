"""The runtime an app embeds: record, rerank, fuse, decide, maybe refresh.

One :class:`DeviceRuntime` per user/device. On every behaviour event it

1. appends the event to the local store (durable before anything else),
2. reranks the cached cloud candidates with the on-device model and the
   freshest history,
3. fuses device and cloud scores (rank-normalised, weight ``alpha``),
4. measures how far the device's ranking has drifted from the cloud's,
5. asks its :class:`~device.policy.RequestPolicy` whether to fetch a new list,
   and if so calls the cloud (with a deadline); on failure it keeps the cache.

Example::

    rt = DeviceRuntime.open("u1.sqlite", reranker, CloudClient(addr), DisagreementPolicy())
    shown = rt.record(item_id=42, ts=time.time()).items   # what the app shows next
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.client import CloudClient, CloudRejected, CloudUnavailable
from device.fusion import fuse
from device.policy import NeverPolicy, PolicyInput, RequestPolicy
from device.reranker import Reranker
from device.store import CachedList, DeviceStore
from shared.agreement import Measure, disagreement
from shared.contract import CandidatesRequest, Reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeConfig:
    candidates: int = 100  # list size asked of the cloud
    show: int = 10  # items the app displays
    alpha: float = 0.5  # the cloud's weight in fusion; 1 = cloud order, 0 = device order
    history_window: int = 50  # newest events sent with a request and fed to the reranker
    exclude_seen: bool = True  # never show what the user already consumed
    measure: Measure = "rbo"  # how device/cloud disagreement is measured
    measure_top: int = 20  # depth of the comparison for rbo: the part of the list users see

    def validate(self) -> None:
        if self.candidates < 1 or self.show < 1 or self.history_window < 1:
            raise ValueError("candidates, show and history_window must be >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class Recommendation:
    """What the device shows after an event: ``items`` (<=show,) best first."""

    items: np.ndarray
    request: Reason | None  # why the cloud was asked during this event, if it was
    request_ok: bool
    disagreement: float
    list_age_s: float


class DeviceRuntime:
    def __init__(self, device_id: str, store: DeviceStore, reranker: Reranker | None,
                 client: CloudClient | None, policy: RequestPolicy | None = None,
                 config: RuntimeConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.device_id = device_id
        self.store = store
        self.reranker = reranker
        self.client = client
        self.policy = policy or NeverPolicy()
        self.config = config or RuntimeConfig()
        self.config.validate()
        self.clock = clock
        self.cached: CachedList | None = store.load_list()
        self.requests = 0
        self.failed_requests = 0
        self.events_since_request = 0
        self._shown = np.zeros(0, dtype=np.int64)
        self._disagreement = 0.0
        if self.cached is not None:
            self._rerank()

    @classmethod
    def open(cls, path: str | Path, reranker: Reranker | None, client: CloudClient | None,
             policy: RequestPolicy | None = None, config: RuntimeConfig | None = None,
             device_id: str | None = None, clock: Callable[[], float] = time.time) -> DeviceRuntime:
        store = DeviceStore(path)
        return cls(device_id or Path(path).stem, store, reranker, client, policy, config, clock)

    # --- the event path ---------------------------------------------------------------------
    def record(self, item_id: int, ts: float | None = None) -> Recommendation:
        """Handle one behaviour event; returns what to show next."""
        now = self.clock() if ts is None else ts
        self.store.append(item_id, now)  # durable first: nothing below may lose it
        self.events_since_request += 1
        self._rerank()
        reason = self.policy.decide(self._policy_input(now))
        ok = False
        if reason is not None:
            ok = self.refresh(reason, now)
        return Recommendation(self._shown[: self.config.show].copy(), reason, ok,
                              self._disagreement, self.cached.age(now) if self.cached else 0.0)

    def recommend(self) -> np.ndarray:
        """(<=show,) the list the app shows now."""
        return self._shown[: self.config.show].copy()

    def refresh(self, reason: Reason = Reason.MANUAL, now: float | None = None) -> bool:
        """Ask the cloud for a new list; on any failure keep the cached one. Returns success."""
        now = self.clock() if now is None else now
        if self.client is None or not self.client.available():
            return False
        history = self.store.recent(self.config.history_window)
        if history.size == 0:
            return False
        req = CandidatesRequest(self.device_id, history,
                                self.store.recent_times(self.config.history_window),
                                self.config.candidates, reason, self.config.exclude_seen,
                                self.cached.list_id if self.cached else "")
        self.requests += 1
        start = time.perf_counter()
        try:
            resp = self.client.get_candidates(req)
        except (CloudUnavailable, CloudRejected) as e:
            self.failed_requests += 1
            self.store.log_request(now, reason.label, False, (time.perf_counter() - start) * 1e3,
                                   error=str(e))
            log.debug("%s: request failed (%s); serving the cached list", self.device_id, e)
            return False
        latency_ms = (time.perf_counter() - start) * 1e3
        self.cached = CachedList(resp.items, resp.scores, resp.list_id, resp.model_version,
                                 now, resp.ttl_seconds)
        self.store.save_list(self.cached)
        self.store.log_request(now, reason.label, True, latency_ms, resp.list_id)
        self.events_since_request = 0
        self._rerank()
        return True

    # --- internals ----------------------------------------------------------------------------
    def _live_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.cached is not None
        items, scores = self.cached.items, self.cached.scores
        if self.config.exclude_seen:
            seen = self.store.seen()
            keep = np.fromiter((int(i) not in seen for i in items), dtype=bool, count=items.size)
            items, scores = items[keep], scores[keep]
        return items, scores

    def _rerank(self) -> None:
        if self.cached is None:
            self._shown = np.zeros(0, dtype=np.int64)
            self._disagreement = 0.0
            return
        items, cloud_scores = self._live_candidates()
        if items.size == 0 or self.reranker is None:
            self._shown, self._disagreement = items, 0.0
            return
        history = self.store.recent(self.config.history_window)
        device_scores = self.reranker.score(history, items)
        fused = fuse(cloud_scores, device_scores, self.config.alpha)
        self._shown = items[np.argsort(-fused, kind="stable")]
        cloud_order = items[np.argsort(-cloud_scores, kind="stable")]
        device_order = items[np.argsort(-device_scores, kind="stable")]
        self._disagreement = disagreement(cloud_order, device_order, self.config.measure,
                                          self.config.measure_top)

    def _policy_input(self, now: float) -> PolicyInput:
        c = self.cached
        remaining = self._shown.size if c is not None else 0
        return PolicyInput(now=now, has_list=c is not None, list_age_s=c.age(now) if c else 0.0,
                           ttl_s=c.ttl_seconds if c else 0.0, remaining=remaining,
                           total=c.items.size if c else 0, disagreement=self._disagreement,
                           events_since_request=self.events_since_request)

    def close(self) -> None:
        self.store.close()
