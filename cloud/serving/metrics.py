"""Server telemetry: Prometheus metrics (``prometheus_client``) and the fleet page's time series.

Every metric the server exports is declared here, once, with its labels; the
operators' surface is a closed schema. Label values come from closed sets
(:data:`LABEL_VALUES`): a value outside its set is counted under ``other``,
so no caller, and no device payload, can grow ``/metrics`` beyond a fixed
number of series. Values that the server itself chooses (the live model
versions) are kept one series per kind.

Example::

    t = Telemetry()
    t.observe_call("GetCandidates", "OK", 0.004)
    t.observe_request("cold_start", history=12, count=100)
    print(t.render())          # text/plain; version=0.0.4
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from dcrec.shared.contract import Reason

# No ``*_created`` series: they double the page and no dashboard here reads them.
disable_created_metrics()

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SERIES_SECONDS = 300  # the fleet page shows the last five minutes
LATENCY_SAMPLES_PER_S = 256  # bounds memory per second of series under any load
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
OTHER = "other"  # what a label value outside its closed set is counted as

# The closed sets label values come from. Methods are the ones this server implements.
METHODS = ("GetCandidates", "GetDeviceModel", "ReportTelemetry", "Check", "Watch",
           "ServerReflectionInfo")
LABEL_VALUES: dict[str, frozenset[str]] = {
    "method": frozenset(METHODS),
    "code": frozenset(c.name for c in grpc.StatusCode),
    "reason": frozenset(r.label for r in Reason) | {"unknown"},
    "outcome": frozenset({"ok", "failed"}),
    "kind": frozenset({"request", "model_update", "error", "session"}),  # telemetry record kinds
    "stage": frozenset({"limiter", "server", "size", "decode"}),
}


def bounded(label: str, value: str, allowed: Iterable[str] | None = None) -> str:
    """``value`` if it is in the closed set of ``label`` (or ``allowed``), else ``other``."""
    return value if value in (LABEL_VALUES[label] if allowed is None else allowed) else OTHER


@dataclass
class _Second:
    requests: int = 0
    errors: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: list[float] = field(default_factory=list)


class Telemetry:
    """All metrics the server exports; safe to call from any handler thread.

    ``telemetry_kinds``: the telemetry record kinds counted by name (others are
    counted as ``other``); defaults to ``LABEL_VALUES["kind"]``.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 telemetry_kinds: Iterable[str] | None = None) -> None:
        self.clock = clock
        self.started = clock()
        self.kinds = frozenset(telemetry_kinds) if telemetry_kinds is not None else LABEL_VALUES["kind"]
        self._lock = threading.Lock()
        self._series: deque[tuple[int, _Second]] = deque(maxlen=SERIES_SECONDS)
        self._reasons: dict[str, int] = defaultdict(int)  # GetCandidates by reason, for the page
        self._device: dict[str, int] = {"ok": 0, "failed": 0}  # requests as devices logged them
        self.inflight = 0
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.grpc_requests = Counter("dcrec_grpc_requests", "RPCs by method and status code",
                                     ("code", "method"), registry=r)
        self.grpc_latency = Histogram("dcrec_grpc_latency_seconds", "RPC latency, seconds",
                                      ("method",), buckets=LATENCY_BUCKETS_S, registry=r)
        self.errors = Counter("dcrec_errors", "RPCs that did not end OK, by status code",
                              ("code",), registry=r)
        self.shed = Counter("dcrec_shed", "calls refused RESOURCE_EXHAUSTED, by where: the "
                            "concurrency limiter, the server's queue bound, the request size limit",
                            ("stage",), registry=r)
        self.candidate_requests = Counter("dcrec_candidate_requests", "GetCandidates calls by request reason",
                                          ("reason",), registry=r)
        self.history_events = Histogram("dcrec_request_history_events", "events sent per request",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.request_candidates = Histogram("dcrec_request_candidates", "candidates asked per request",
                                            buckets=(10, 20, 50, 100, 200, 500), registry=r)
        self.batch_size = Histogram("dcrec_batch_size", "requests answered per generator call",
                                    buckets=SIZE_BUCKETS, registry=r)
        self.model_info = Gauge("dcrec_model_info", "live model versions (value: release sequence)",
                                ("kind", "version"), registry=r)
        self.device_records = Counter("dcrec_device_telemetry_records",
                                      "telemetry records devices uploaded, by kind", ("kind",), registry=r)
        self.device_rejected = Counter("dcrec_device_telemetry_rejected",
                                       "telemetry records refused for good (malformed)", registry=r)
        self.device_requests = Counter("dcrec_device_requests",
                                       "candidate requests as the devices logged them, by reason and outcome",
                                       ("outcome", "reason"), registry=r)
        self.device_latency = Histogram("dcrec_device_request_latency_seconds",
                                        "request latency as the devices measured it, seconds",
                                        buckets=LATENCY_BUCKETS_S, registry=r)
        Gauge("dcrec_inflight_requests", "RPCs being handled now", registry=r
              ).set_function(lambda: float(self.inflight))
        Gauge("dcrec_uptime_seconds", "seconds since the server started", registry=r
              ).set_function(lambda: self.clock() - self.started)
        self._models: dict[str, str] = {}  # kind -> the version its one series carries

    def _second(self) -> _Second:
        now = int(self.clock())
        if not self._series or self._series[-1][0] != now:
            self._series.append((now, _Second()))
        return self._series[-1][1]

    # --- what the server reports ------------------------------------------------------------------
    def observe_call(self, method: str, code: str, seconds: float) -> None:
        """One finished RPC: ``code`` is the gRPC status name (``OK``, ``INVALID_ARGUMENT``...)."""
        method, code = bounded("method", method), bounded("code", code)
        self.grpc_requests.labels(code=code, method=method).inc()
        self.grpc_latency.labels(method=method).observe(seconds)
        if code != "OK":
            self.errors.labels(code=code).inc()
        with self._lock:
            sec = self._second()
            sec.requests += 1
            sec.errors += code != "OK"
            if len(sec.latencies) < LATENCY_SAMPLES_PER_S:
                sec.latencies.append(seconds)

    def observe_shed(self, method: str, stage: str, seconds: float = 0.0) -> None:
        """One call refused ``RESOURCE_EXHAUSTED`` at ``stage`` (also counted as a finished RPC)."""
        self.shed.labels(stage=bounded("stage", stage)).inc()
        self.observe_call(method, "RESOURCE_EXHAUSTED", seconds)

    def observe_request(self, reason: str, history: int, count: int) -> None:
        """One valid GetCandidates: why the device asked, events sent, candidates wanted."""
        reason = bounded("reason", reason)
        self.candidate_requests.labels(reason=reason).inc()
        self.history_events.observe(history)
        self.request_candidates.observe(count)
        with self._lock:
            self._reasons[reason] += 1
            self._second().reasons[reason] += 1

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def set_model(self, kind: str, version: str, sequence: int = 0) -> None:
        """The live model of ``kind`` (cloud or device); one labelled series per kind."""
        with self._lock:
            old = self._models.get(kind)
            if old is not None and old != version:
                self.model_info.remove(kind, old)
            self._models[kind] = version
            self.model_info.labels(kind=kind, version=version).set(float(sequence))

    def observe_device_record(self, kind: str) -> None:
        """One accepted telemetry record of ``kind`` (kinds outside :attr:`kinds` count as other)."""
        self.device_records.labels(kind=bounded("kind", kind, self.kinds)).inc()

    def observe_device_rejected(self, n: int = 1) -> None:
        """``n`` telemetry records refused for good."""
        self.device_rejected.inc(n)

    def observe_device_request(self, reason: str, ok: bool, latency_ms: float | None) -> None:
        """One request a device logged: its reason, whether it got a list, the latency it saw."""
        outcome = "ok" if ok else "failed"
        self.device_requests.labels(outcome=outcome, reason=bounded("reason", reason)).inc()
        with self._lock:
            self._device[outcome] += 1
        if latency_ms is not None and math.isfinite(latency_ms) and latency_ms >= 0:
            self.device_latency.observe(latency_ms / 1000.0)

    # --- readers --------------------------------------------------------------------------------
    def render(self) -> str:
        """Prometheus text exposition format 0.0.4 (``CONTENT_TYPE``)."""
        return generate_latest(self.registry).decode()

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when absent); for tests and tools."""
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def series(self, seconds: int = SERIES_SECONDS) -> dict[str, object]:
        """Per-second series for the fleet page: times, request rate, errors, latency p50/p95 (ms);
        totals since start by request reason, and of the requests devices reported (ok / failed)."""
        now = int(self.clock())
        with self._lock:
            by_t = {t: s for t, s in self._series if t > now - seconds}
            counters = dict(self._reasons)
            device = dict(self._device)
        times = list(range(now - seconds + 1, now + 1))
        p50, p95 = [], []
        for t in times:
            lat = sorted(by_t[t].latencies) if t in by_t else []
            p50.append(_quantile(lat, 0.5) * 1e3)
            p95.append(_quantile(lat, 0.95) * 1e3)
        return {
            "t": times,
            "requests": [by_t[t].requests if t in by_t else 0 for t in times],
            "errors": [by_t[t].errors if t in by_t else 0 for t in times],
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "reasons_total": counters,
            "device_requests_total": device,
        }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]
