"""Server telemetry: Prometheus counters and histograms, and the fleet page's time series.

Written by hand (a few dozen lines) rather than pulled in as a dependency: the
exposition format is plain text and the server needs only counters, gauges
and fixed-bucket histograms. Everything is guarded by one lock; updates are a
handful of dict operations per call.

Example::

    t = Telemetry()
    t.observe_call("GetCandidates", "OK", 0.004)
    t.observe_request("cold_start", history=12, count=100)
    print(t.render())          # text/plain; version=0.0.4
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SERIES_SECONDS = 300  # the fleet page shows the last five minutes
LATENCY_SAMPLES_PER_S = 256  # bounds memory per second of series under any load

Labels = tuple[tuple[str, str], ...]


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.buckets, v)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += v
        self.n += 1


@dataclass
class _Second:
    requests: int = 0
    errors: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: list[float] = field(default_factory=list)


class Telemetry:
    """All counters the server exports; safe to call from any handler thread."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hists: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._series: deque[tuple[int, _Second]] = deque(maxlen=SERIES_SECONDS)
        self.inflight = 0

    # --- primitives -----------------------------------------------------------------------------
    def _declare(self, name: str, kind: str, text: str) -> None:
        self._help.setdefault(name, (kind, text))

    def inc(self, name: str, text: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._declare(name, "counter", text)
            self._counters[name][tuple(sorted(labels.items()))] += value

    def set_gauge(self, name: str, text: str, value: float, **labels: str) -> None:
        with self._lock:
            self._declare(name, "gauge", text)
            self._gauges[name][tuple(sorted(labels.items()))] = value

    def clear_gauge(self, name: str) -> None:
        with self._lock:
            self._gauges[name].clear()

    def observe(self, name: str, text: str, value: float, buckets: tuple[float, ...],
                **labels: str) -> None:
        with self._lock:
            self._declare(name, "histogram", text)
            key = tuple(sorted(labels.items()))
            h = self._hists[name].get(key)
            if h is None:
                h = self._hists[name][key] = _Histogram(buckets)
            h.observe(value)

    def _second(self) -> _Second:
        now = int(self.clock())
        if not self._series or self._series[-1][0] != now:
            self._series.append((now, _Second()))
        return self._series[-1][1]

    # --- what the server reports ------------------------------------------------------------------
    def observe_call(self, method: str, code: str, seconds: float) -> None:
        """One finished RPC: ``code`` is the gRPC status name (``OK``, ``INVALID_ARGUMENT``...)."""
        self.inc("dcrec_grpc_requests_total", "RPCs by method and status code",
                 method=method, code=code)
        self.observe("dcrec_grpc_latency_seconds", "RPC latency, seconds", seconds,
                     LATENCY_BUCKETS_S, method=method)
        if code != "OK":
            self.inc("dcrec_errors_total", "RPCs that did not end OK, by status code", code=code)
        with self._lock:
            sec = self._second()
            sec.requests += 1
            sec.errors += code != "OK"
            if len(sec.latencies) < LATENCY_SAMPLES_PER_S:
                sec.latencies.append(seconds)

    def observe_request(self, reason: str, history: int, count: int) -> None:
        """One valid GetCandidates: why the device asked, events sent, candidates wanted."""
        self.inc("dcrec_candidate_requests_total", "GetCandidates calls by request reason",
                 reason=reason)
        self.observe("dcrec_request_history_events", "events sent per request", history,
                     SIZE_BUCKETS)
        self.observe("dcrec_request_candidates", "candidates asked per request", count,
                     (10, 20, 50, 100, 200, 500))
        with self._lock:
            self._second().reasons[reason] += 1

    def observe_batch(self, size: int) -> None:
        self.observe("dcrec_batch_size", "requests answered per generator call", size, SIZE_BUCKETS)

    def set_model(self, kind: str, version: str, sequence: int = 0) -> None:
        """The live model of ``kind`` (cloud or device); one labelled gauge per kind."""
        with self._lock:
            self._declare("dcrec_model_info", "gauge", "live model versions (value: release sequence)")
            g = self._gauges["dcrec_model_info"]
            for key in [k for k in g if dict(k).get("kind") == kind]:
                del g[key]
            g[(("kind", kind), ("version", version))] = float(sequence)

    # --- readers --------------------------------------------------------------------------------
    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        with self._lock:
            self._declare("dcrec_inflight_requests", "gauge", "RPCs being handled now")
            self._gauges["dcrec_inflight_requests"][()] = float(self.inflight)
            self._declare("dcrec_uptime_seconds", "gauge", "seconds since the server started")
            self._gauges["dcrec_uptime_seconds"][()] = self.clock() - self.started
            for name in sorted(self._help):
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    for key, v in sorted(self._counters[name].items()):
                        lines.append(f"{name}{_labels(key)} {v:g}")
                elif kind == "gauge":
                    for key, v in sorted(self._gauges[name].items()):
                        lines.append(f"{name}{_labels(key)} {v:g}")
                else:
                    for key, h in sorted(self._hists[name].items()):
                        cum = 0
                        for b, c in zip(h.buckets, h.counts, strict=True):
                            cum += c
                            bound = f"{b:g}"
                            le = _labels(key, f'le="{bound}"')
                            lines.append(f"{name}_bucket{le} {cum}")
                        le = _labels(key, 'le="+Inf"')
                        lines.append(f"{name}_bucket{le} {h.n}")
                        lines.append(f"{name}_sum{_labels(key)} {h.total:g}")
                        lines.append(f"{name}_count{_labels(key)} {h.n}")
        return "\n".join(lines) + "\n"

    def series(self, seconds: int = SERIES_SECONDS) -> dict[str, object]:
        """Per-second series for the fleet page: times, request rate, errors, latency p50/p95 (ms);
        totals since start by request reason, and of the requests devices reported (ok / failed)."""
        now = int(self.clock())
        with self._lock:
            by_t = {t: s for t, s in self._series if t > now - seconds}
            counters = {r: int(v) for k, v in self._counters["dcrec_candidate_requests_total"].items()
                        for r in [dict(k)["reason"]]}
            device = {"ok": 0, "failed": 0}  # requests as devices logged them (ReportTelemetry)
            for k, v in self._counters.get("dcrec_device_requests_total", {}).items():
                outcome = dict(k).get("outcome", "")
                if outcome in device:
                    device[outcome] += int(v)
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
