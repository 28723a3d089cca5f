"""Per-device figures: paired comparisons between runs, the demo's explanation, the drift slice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcrec.simulator.bench.adaptation import genre_shift, genres
from dcrec.simulator.demo import explain
from dcrec.simulator.fleet import FleetResult
from dcrec.simulator.metrics import TimeSeries
from dcrec.simulator.replay import ReplayResult
from dcrec.simulator.report import paired_per_device


def fleet(policy: str, per_device: dict[str, tuple[int, int, int, float]]) -> FleetResult:
    return FleetResult(policy, TimeSeries(0.0, 1.0, 10), len(per_device), 1.0, 0.0, 0, 0, 0, 0.0, 0.0,
                       per_device=per_device)


def test_paired_difference_is_over_the_devices_both_ran() -> None:
    rng = np.random.default_rng(0)
    base = {f"d{i}": (i, 10, 3, float(rng.uniform(0, 3))) for i in range(200)}
    better = {d: (u, e, h, n + 0.5) for d, (u, e, h, n) in base.items()}  # +0.05 per event everywhere
    better["extra"] = (999, 10, 10, 10.0)  # a device only one run has is left out
    d, lo, hi, n = paired_per_device(fleet("b", better), fleet("a", base))
    assert n == 200 and d == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    noisy = {dv: (u, e, h, n + float(rng.normal(0, 1))) for dv, (u, e, h, n) in base.items()}
    d, lo, hi, n = paired_per_device(fleet("c", noisy), fleet("a", base))
    assert lo < d < hi and lo < 0 < hi  # pure noise: the interval holds 0
    d, lo, hi, n = paired_per_device(fleet("b", better), fleet("a", base), devices={"d1", "d2"})
    assert n == 2
    with pytest.raises(ValueError, match="share no device"):
        paired_per_device(fleet("b", {"x": (0, 1, 0, 0.0)}), fleet("a", base))


def test_the_demo_explains_its_table_with_paired_intervals() -> None:
    per = {f"d{i}": (i, 10, 2, 1.0) for i in range(50)}
    runs = []
    for policy, ndcg, requests in (("never", 0.10, 0), ("system", 0.15, 25), ("always", 0.20, 500)):
        f = fleet(policy, {d: (u, e, h, n * ndcg / 0.1) for d, (u, e, h, n) in per.items()})
        runs.append(ReplayResult(policy, events=500, hits=100, ndcg_sum=500 * ndcg, requests=requests,
                                 fleet=f))
    text = explain(runs, 0.05)
    assert "asked the cloud on 5.0% of events (its budget: 5%)" in text
    assert "recovers 50% of the gap" in text
    assert "the system minus never: NDCG@10 +0.0500" in text
    assert "the system minus always: NDCG@10 -0.0500" in text
    flat = [ReplayResult(p, events=500, ndcg_sum=50.0, requests=r) for p, r in
            (("never", 0), ("system", 25), ("always", 500))]
    assert "worth nothing" in explain(flat, 0.05)
    assert explain(flat[:2], 0.05) == ""


def test_genre_shift_is_a_distance_between_genre_mixes(ml100k, ml_split) -> None:  # type: ignore[no-untyped-def]
    g = genres(ml100k)
    assert g[1] == frozenset({"Animation", "Children's", "Comedy"}) and g[0] == frozenset()
    shift = genre_shift(ml100k, ml_split)
    assert shift.shape == (ml100k.n_users,)
    ok = shift[~np.isnan(shift)]
    assert ok.size > 900 and (ok >= 0).all() and (ok <= 1 + 1e-12).all() and ok.std() > 0.01
    # by hand for one user: total variation between the two genre mixes
    u = int(np.nanargmax(shift))
    def mix(items: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for i in items:
            for name in g[int(i)]:
                out[name] = out.get(name, 0.0) + 1 / len(g[int(i)])
        total = sum(out.values())
        return {k: v / total for k, v in out.items()}
    a, b = mix(ml_split.cloud_sequences()[u]), mix(ml_split.stream_events(u)[0])
    want = 0.5 * sum(abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b))
    assert math.isclose(shift[u], want, rel_tol=1e-9)
