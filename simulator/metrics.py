"""Fleet metrics over simulated time: additive bins, so shards merge by summing.

Each bin covers ``bin_s`` simulated seconds from ``t0`` and counts what the
devices showed (HR/NDCG of the shown list against the item the user chose
next, the age of the list), what they asked (requests by reason, failures,
payload bytes each way) and how long calls took (wall-clock milliseconds; the
only figures that differ between runs with the same seed).

Example::

    ts = TimeSeries(t0=0.0, bin_s=5.0, k=10)
    ts.event(t=3.2, position=0, age_s=12.0, empty=False)    # a hit at the top
    ts.request(t=3.2, reason="disagreement", ok=True, latency_ms=1.4, up=900, down=1500)
    ts.rows()[0]["HR@10"]   # 1.0
"""

from __future__ import annotations

import csv
import math
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(slots=True)
class BinStats:
    events: int = 0
    hits: int = 0  # the chosen item was in the shown top k (for simulated users: a click)
    ndcg: float = 0.0  # sum of 1/log2(position + 2) over hits
    empty: int = 0  # events before which the device had nothing to show
    age_sum: float = 0.0  # simulated seconds; age of the list shown
    age_max: float = 0.0
    requests: int = 0  # calls triggered by events (what the request ratio counts)
    bootstrap: int = 0  # each device's first list
    failed: int = 0  # calls that went out and got no list
    rejected: int = 0  # ... of which the cloud refused as invalid
    up: int = 0  # payload bytes device -> cloud (protobuf message sizes)
    down: int = 0  # payload bytes cloud -> device
    reasons: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, o: BinStats) -> None:
        self.events += o.events
        self.hits += o.hits
        self.ndcg += o.ndcg
        self.empty += o.empty
        self.age_sum += o.age_sum
        self.age_max = max(self.age_max, o.age_max)
        self.requests += o.requests
        self.bootstrap += o.bootstrap
        self.failed += o.failed
        self.rejected += o.rejected
        self.up += o.up
        self.down += o.down
        self.reasons.update(o.reasons)
        self.latencies_ms.extend(o.latencies_ms)

    def deterministic(self) -> dict[str, object]:
        """Everything but wall-clock latency: equal for equal seeds, however the run is sharded."""
        return {"events": self.events, "hits": self.hits, "ndcg": round(self.ndcg, 9),
                "empty": self.empty, "age_sum": round(self.age_sum, 6), "age_max": self.age_max,
                "requests": self.requests, "bootstrap": self.bootstrap, "failed": self.failed,
                "rejected": self.rejected, "up": self.up, "down": self.down,
                "reasons": dict(sorted(self.reasons.items()))}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


class TimeSeries:
    """Bins of simulated time; thread-safe (devices record from worker threads)."""

    def __init__(self, t0: float, bin_s: float, k: int = 10) -> None:
        if bin_s <= 0:
            raise ValueError(f"bin_s must be > 0, got {bin_s}")
        self.t0 = t0
        self.bin_s = bin_s
        self.k = k
        self.bins: dict[int, BinStats] = {}
        self._discounts = 1.0 / np.log2(np.arange(k) + 2.0)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:  # travels between Ray workers; locks do not
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _bin(self, t: float) -> BinStats:
        i = int(math.floor((t - self.t0) / self.bin_s))
        b = self.bins.get(i)
        if b is None:
            b = self.bins[i] = BinStats()
        return b

    def event(self, t: float, position: int, age_s: float, empty: bool) -> None:
        """One event at simulated time ``t``; ``position`` of the chosen item in the shown list, -1 if absent."""
        with self._lock:
            b = self._bin(t)
            b.events += 1
            if 0 <= position < self.k:
                b.hits += 1
                b.ndcg += float(self._discounts[position])
            b.empty += int(empty)
            b.age_sum += age_s
            b.age_max = max(b.age_max, age_s)

    def request(self, t: float, reason: str, ok: bool, latency_ms: float, up: int, down: int,
                rejected: bool = False, bootstrap: bool = False) -> None:
        with self._lock:
            b = self._bin(t)
            if bootstrap:
                b.bootstrap += 1
            else:
                b.requests += 1
                b.reasons[reason] += 1
            b.failed += int(not ok)
            b.rejected += int(rejected)
            b.up += up
            b.down += down
            b.latencies_ms.append(latency_ms)

    def merge(self, other: TimeSeries) -> None:
        if (other.t0, other.bin_s, other.k) != (self.t0, self.bin_s, self.k):
            raise ValueError("time series with different bins cannot merge")
        with self._lock:
            for i, b in other.bins.items():
                self.bins.setdefault(i, BinStats()).add(b)

    def total(self) -> BinStats:
        out = BinStats()
        for i in sorted(self.bins):
            out.add(self.bins[i])
        return out

    def deterministic(self) -> dict[int, dict[str, object]]:
        return {i: self.bins[i].deterministic() for i in sorted(self.bins)}

    def rows(self) -> list[dict[str, float | int | str]]:
        """One dict per bin (gaps filled with zeros), ready for CSV and plots."""
        if not self.bins:
            return []
        reasons = sorted({r for b in self.bins.values() for r in b.reasons})
        out: list[dict[str, float | int | str]] = []
        for i in range(min(self.bins), max(self.bins) + 1):
            b = self.bins.get(i, BinStats())
            ev = b.events
            row: dict[str, float | int | str] = {
                "t_s": round(self.t0 + i * self.bin_s, 6),
                "t_rel_s": round(i * self.bin_s, 6),
                "events": ev,
                f"HR@{self.k}": b.hits / ev if ev else math.nan,
                f"NDCG@{self.k}": b.ndcg / ev if ev else math.nan,
                "requests": b.requests,
                "bootstrap": b.bootstrap,
                "failed": b.failed,
                "request_ratio": b.requests / ev if ev else math.nan,
                "cloud_qps": (b.requests + b.bootstrap) / self.bin_s,
                "request_qps": b.requests / self.bin_s,
                "bootstrap_qps": b.bootstrap / self.bin_s,
                "failed_qps": b.failed / self.bin_s,
                "latency_p50_ms": percentile(b.latencies_ms, 50),
                "latency_p99_ms": percentile(b.latencies_ms, 99),
                "bytes_up": b.up,
                "bytes_down": b.down,
                "list_age_mean_s": b.age_sum / ev if ev else math.nan,
                "list_age_max_s": b.age_max,
                "shown_empty": b.empty,
            }
            for r in reasons:
                row[f"reason_{r}"] = b.reasons.get(r, 0)
            out.append(row)
        return out


def summarize(ts: TimeSeries) -> dict[str, float]:
    """Run-wide figures: quality of what was shown, requests, bytes, load, latency, list age."""
    b = ts.total()
    ev = b.events
    span = (max(ts.bins) - min(ts.bins) + 1) * ts.bin_s if ts.bins else 0.0
    qps = [(x.requests + x.bootstrap) / ts.bin_s for x in ts.bins.values()]
    return {
        f"HR@{ts.k}": b.hits / ev if ev else 0.0,
        f"NDCG@{ts.k}": b.ndcg / ev if ev else 0.0,
        "request_ratio": b.requests / ev if ev else 0.0,
        "events": float(ev),
        "requests": float(b.requests),
        "bootstrap_requests": float(b.bootstrap),
        "failed_requests": float(b.failed),
        "bytes_up": float(b.up),
        "bytes_down": float(b.down),
        "cloud_qps_mean": (b.requests + b.bootstrap) / span if span else 0.0,
        "cloud_qps_peak": max(qps) if qps else 0.0,
        "latency_p50_ms": percentile(b.latencies_ms, 50),
        "latency_p99_ms": percentile(b.latencies_ms, 99),
        "list_age_mean_s": b.age_sum / ev if ev else 0.0,
        "shown_empty": float(b.empty),
    }


def recovery_peak(ts: TimeSeries, outage_start: float, outage_end: float,
                  warmup_s: float = 0.0, after_s: float | None = None) -> tuple[float, float]:
    """(steady, peak) request attempts per simulated second around an outage.

    ``steady`` is the mean over whole bins between ``t0 + warmup_s`` and the
    outage; ``peak`` the largest bin from the outage's end (within ``after_s``).
    Times are absolute simulated seconds.
    """
    def rate(b: BinStats) -> float:
        return b.requests / ts.bin_s

    steady = [rate(b) for i, b in ts.bins.items()
              if ts.t0 + i * ts.bin_s >= ts.t0 + warmup_s and ts.t0 + (i + 1) * ts.bin_s <= outage_start]
    end = math.inf if after_s is None else outage_end + after_s
    peak = [rate(b) for i, b in ts.bins.items() if outage_end <= ts.t0 + i * ts.bin_s < end]
    return (float(np.mean(steady)) if steady else math.nan, max(peak) if peak else math.nan)


def write_csv(path: Path, rows: Iterable[dict[str, object]]) -> None:
    rows = list(rows)
    if not rows:
        path.write_text("")
        return
    cols: list[str] = []
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval=0)
        w.writeheader()
        w.writerows(rows)
