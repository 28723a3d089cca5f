"""Fleet metrics: bins in simulated time, merging shards, the recovery-peak measure, CSV."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

import pytest

from dcrec.simulator.metrics import TimeSeries, recovery_peak, summarize, write_csv


def test_bins_count_quality_requests_and_bytes(tmp_path: Path) -> None:
    ts = TimeSeries(0.0, 10.0, k=10)
    ts.event(1.0, position=0, age_s=5.0, empty=False)  # hit at the top: NDCG 1
    ts.event(2.0, position=1, age_s=7.0, empty=False)  # hit at 2: 1/log2(3)
    ts.event(3.0, position=-1, age_s=9.0, empty=False)
    ts.event(15.0, position=12, age_s=1.0, empty=True)  # beyond k: a miss
    ts.request(2.0, "disagreement", True, 3.0, up=100, down=900)
    ts.request(2.5, "cold_start", False, 50.0, up=80, down=0, bootstrap=True)
    rows = ts.rows()
    assert [r["t_s"] for r in rows] == [0.0, 10.0]
    r0, r1 = rows
    assert r0["events"] == 3 and r0["HR@10"] == pytest.approx(2 / 3)
    assert r0["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert r0["requests"] == 1 and r0["bootstrap"] == 1 and r0["failed"] == 1
    assert r0["request_ratio"] == pytest.approx(1 / 3) and r0["cloud_qps"] == pytest.approx(0.2)
    assert r0["bytes_up"] == 180 and r0["bytes_down"] == 900 and r0["reason_disagreement"] == 1
    assert r0["list_age_mean_s"] == pytest.approx(7.0) and r0["list_age_max_s"] == 9.0
    assert r1["HR@10"] == 0.0 and r1["shown_empty"] == 1 and r1["requests"] == 0
    s = summarize(ts)
    assert s["events"] == 4 and s["HR@10"] == pytest.approx(0.5) and s["request_ratio"] == 0.25
    write_csv(tmp_path / "t.csv", rows)
    with (tmp_path / "t.csv").open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == 2 and float(got[0]["HR@10"]) == pytest.approx(2 / 3)


def test_shards_merge_to_the_whole() -> None:
    whole, a, b = (TimeSeries(0.0, 5.0) for _ in range(3))
    for i in range(40):
        part = a if i % 2 else b
        for ts in (whole, part):
            ts.event(i * 0.7, i % 13 - 1, float(i), False)
            ts.request(i * 0.7, "expired" if i % 3 else "disagreement", i % 5 != 0, 1.0, i, 2 * i)
    b = pickle.loads(pickle.dumps(b))  # shards come back from Ray workers pickled
    a.merge(b)
    assert a.deterministic() == whole.deterministic()
    with pytest.raises(ValueError):
        a.merge(TimeSeries(0.0, 1.0))


def test_recovery_peak_compares_after_with_before() -> None:
    ts = TimeSeries(0.0, 10.0)
    for t in range(0, 300):
        n = 1
        if 100 <= t < 130:
            n = 0  # outage: nothing gets through
        elif 130 <= t < 140:
            n = 3  # the herd
        for _ in range(n):
            ts.request(t + 0.5, "disagreement", True, 1.0, 1, 1)
    steady, peak = recovery_peak(ts, 100.0, 130.0, warmup_s=20.0)
    assert steady == pytest.approx(1.0) and peak == pytest.approx(3.0)
