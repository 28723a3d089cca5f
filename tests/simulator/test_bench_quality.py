"""The quality harness on a small slice of MovieLens: its invariants, on real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dcrec.simulator.bench import report
from dcrec.simulator.bench.quality import QualityConfig, calibrate_threshold, run
from dcrec.simulator.bench.request_value import earlier, prefixes_for


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=200,
                        device_model={"dim": 16, "layers": 1, "heads": 1},
                        baselines=("most-popular", "sasrec", "gru4rec"),
                        workdir=tmp_path_factory.mktemp("bench"))
    rows, infos = run(cfg)
    return cfg, rows, infos


def get(rows, variant, ratio=None):  # type: ignore[no-untyped-def]
    [r] = [r for r in rows if r.variant == variant and r.ratio == ratio]
    return r.metrics


def test_ratio_extremes_equal_the_bounds(bench) -> None:  # type: ignore[no-untyped-def]
    _, rows, _ = bench
    for variant in ("random", "disagreement"):
        assert get(rows, variant, 1.0)["NDCG@10"] == pytest.approx(get(rows, "always-fresh")["NDCG@10"])
        assert get(rows, variant, 0.0)["NDCG@10"] == pytest.approx(get(rows, "fusion")["NDCG@10"])
        assert get(rows, variant, 0.0)["measured_ratio"] == 0.0
        assert get(rows, variant, 1.0)["measured_ratio"] == 1.0
    assert get(rows, "random", 0.2)["measured_ratio"] == pytest.approx(0.2)
    # The bucket caps the disagreement requests at the budget (200 users, capacity 2 tokens).
    for r in (0.05, 0.1, 0.2, 0.3, 0.5):
        assert 0.0 < get(rows, "disagreement", r)["measured_ratio"] <= r + 2 / 200


def test_every_metric_is_a_probability(bench) -> None:  # type: ignore[no-untyped-def]
    _, rows, _ = bench
    variants = {r.variant for r in rows}
    assert {"cloud-stale", "cloud-fresh", "device-only", "fusion", "always-fresh", "random",
            "disagreement", "LOO most-popular", "LOO sasrec", "LOO gru4rec"} <= variants
    for r in rows:
        for name in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "recall@list"):
            assert 0.0 <= r.metrics[name] <= 1.0, (r.variant, name)
        assert r.metrics["HR@5"] <= r.metrics["HR@10"] <= r.metrics["HR@20"]
        assert r.metrics["NDCG@10"] <= r.metrics["HR@10"]
        assert r.metrics["HR@20"] <= r.metrics["recall@list"] + 1e-12


def test_fusion_weights_come_from_the_grid(bench) -> None:  # type: ignore[no-untyped-def]
    cfg, rows, infos = bench
    assert 0.0 <= infos[0]["alpha_stale"] <= 1.0 and 0.0 <= infos[0]["alpha_fresh"] <= 1.0
    # Fusion reorders the list it is given: the fresh list's recall stays the fresh list's; the
    # stale one is blended with the index's local list first (the system), which can only add
    # what the local list holds.
    assert cfg.neighbours == 50  # the bench runs the system
    assert get(rows, "always-fresh")["recall@list"] == pytest.approx(get(rows, "cloud-fresh")["recall@list"])
    stale = get(rows, "fusion")["recall@list"]
    assert get(rows, "cloud-stale")["recall@list"] <= stale + 1e-12  # every stale item stays listed
    assert stale <= get(rows, "cloud-stale")["recall@list"] + get(rows, "neighbour-index")["recall@list"] + 1e-12


def test_report_outputs(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, rows, _ = bench
    table = report.markdown(rows)
    assert "| cloud-stale |" in table and "fusion + disagreement r=5%" in table
    # the headline: the system (learned at its budget) first, then its baselines, from the same rows
    head = report.headline(rows, cfg.system, cfg.system_ratio)
    learned, never = get(rows, "learned", 0.05), get(rows, "fusion")
    lines = head.splitlines()
    assert lines[0] == "The system (system), 1 seed(s), request budget 5 %:"
    assert lines[4].startswith("| the system (fusion + learned requests) | ")
    assert f"| {learned['NDCG@10']:.4f} ± 0.0000 |" in lines[4]
    assert f"| never: fusion, no request after the first list | 0% | {never['NDCG@10']:.4f} ± 0.0000 |" in head
    assert "| leave-one-out: SASRec (reproduced reference) | - |" in head
    assert f"The system minus random at 5 %, NDCG@10, per seed (95 % paired bootstrap over users): " \
           f"{learned['vs_random']:+.4f}" in head
    report.write_csv(rows, tmp_path / "q.csv")
    assert len((tmp_path / "q.csv").read_text().splitlines()) == len(rows) + 1
    report.plot(rows, tmp_path / "q.png", "test")
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_calibration() -> None:
    scores = np.linspace(0, 1, 101)
    assert calibrate_threshold(scores, 0.0) == 1.0
    assert calibrate_threshold(scores, 1.0) < 0
    assert np.mean(scores > calibrate_threshold(scores, 0.2)) == pytest.approx(0.2, abs=0.01)


def test_parallel_jobs_reproduce_one_process(tmp_path: Path) -> None:
    """Seeds and baselines in worker processes give the same table as one process."""
    kw = dict(dataset="ml-100k", cloud_backend="cooccurrence", seeds=2, baseline_seeds=1, device_epochs=1, max_users=100,
              device_model={"dim": 16, "layers": 1, "heads": 1}, baselines=("most-popular",),
              ratios=(0.0, 0.2, 1.0), threads=1)
    one, _ = run(QualityConfig(**kw, jobs=1, workdir=tmp_path / "one"))  # type: ignore[arg-type]
    two, _ = run(QualityConfig(**kw, jobs=2, workdir=tmp_path / "two"))  # type: ignore[arg-type]
    assert [(r.variant, r.ratio, r.seed) for r in one] == [(r.variant, r.ratio, r.seed) for r in two]
    assert [r.variant for r in one].count("LOO most-popular") == 1  # baselines for seed 0 only
    for a, b in zip(one, two, strict=True):
        quality = {k: v for k, v in a.metrics.items() if k != "train_s"}  # a wall time
        assert quality == pytest.approx({k: b.metrics[k] for k in quality}), a.variant


@pytest.mark.parametrize("objective", ["collab", "random"])
def test_device_model_trained_again_on_lists(tmp_path: Path, objective: str) -> None:
    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=100, baselines=(),
                        device_model={"dim": 16, "layers": 1, "heads": 1}, ratios=(0.0, 1.0),
                        device_objective=objective, device_folds=2, threads=1,
                        workdir=tmp_path)
    rows, infos = run(cfg)
    assert infos[0]["device_objective"] == objective and infos[0]["device_list_train_s"] > 0
    assert (tmp_path / "ml-100k" / "seed0" / f"device-{objective}" / "reranker.json").is_file()
    assert get(rows, "disagreement", 1.0)["NDCG@10"] == pytest.approx(get(rows, "always-fresh")["NDCG@10"])
    # A second run with reuse takes the full model from disk instead of training it again.
    before = (tmp_path / "ml-100k" / "seed0" / "device" / "sasrec.pt").stat().st_mtime_ns
    listed = tmp_path / "ml-100k" / "seed0" / f"device-{objective}" / "reranker.pt"
    listed_before = listed.stat().st_mtime_ns
    run(QualityConfig(**{**cfg.__dict__, "reuse": True}))
    assert (tmp_path / "ml-100k" / "seed0" / "device" / "sasrec.pt").stat().st_mtime_ns == before
    assert listed.stat().st_mtime_ns == listed_before


def test_device_candidates_and_the_uncovered_measure(tmp_path: Path) -> None:
    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=150, baselines=(),
                        device_model={"dim": 16, "layers": 1, "heads": 1}, ratios=(0.0, 0.2, 1.0),
                        device_candidates=10, measure="uncovered", threads=1, workdir=tmp_path)
    rows, infos = run(cfg)
    assert infos[0]["regret_temperature"] in cfg.regret_temperatures
    # The device's top 10 are among the candidates: the widened list holds the target at
    # least as often as the device's own top 10, and as often as the cloud's list.
    fused = get(rows, "fusion")
    assert fused["recall@list"] >= get(rows, "device-only")["HR@10"] - 1e-12
    assert fused["recall@list"] >= get(rows, "cloud-stale")["recall@list"] - 1e-12
    assert get(rows, "always-fresh")["recall@list"] >= get(rows, "cloud-fresh")["recall@list"] - 1e-12
    assert get(rows, "disagreement", 0.0)["NDCG@10"] == pytest.approx(fused["NDCG@10"])
    assert get(rows, "disagreement", 1.0)["NDCG@10"] == pytest.approx(get(rows, "always-fresh")["NDCG@10"])
    assert 0.0 < get(rows, "disagreement", 0.2)["measured_ratio"] <= 0.2 + 2 / 150
    with pytest.raises(ValueError, match="device_candidates must be >= 0"):
        run(QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_candidates=-1, workdir=tmp_path))


def test_local_lists_from_the_neighbour_index(tmp_path: Path) -> None:
    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=150, baselines=(),
                        device_model={"dim": 16, "layers": 1, "heads": 1}, ratios=(0.0, 0.2, 1.0),
                        device_candidates=3, neighbours=20, threads=1, workdir=tmp_path)
    rows, infos = run(cfg)
    assert infos[0]["neighbour_weight"] in cfg.neighbour_weights
    local, fused = get(rows, "neighbour-index"), get(rows, "fusion")
    # The stale side ranks the stale list united with the local list (and the device's picks):
    # it holds the target whenever either list does.
    assert fused["recall@list"] >= max(local["recall@list"], get(rows, "cloud-stale")["recall@list"]) - 1e-12
    assert 0.0 < local["NDCG@10"] <= local["recall@list"]
    # Fresh lists are ranked alone: the always-fresh bound is the one without the index.
    plain, _ = run(QualityConfig(**{**cfg.__dict__, "neighbours": 0, "workdir": tmp_path, "reuse": True}))
    assert get(rows, "always-fresh")["NDCG@10"] == pytest.approx(get(plain, "always-fresh")["NDCG@10"])
    assert get(rows, "disagreement", 0.0)["NDCG@10"] == pytest.approx(fused["NDCG@10"])
    with pytest.raises(ValueError, match="neighbours must be >= 0"):
        run(QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", neighbours=-1, workdir=tmp_path))


def test_reuse_loads_a_cloud_model_only_when_it_was_trained_on_the_same_data(tmp_path: Path) -> None:
    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=100, baselines=(),
                        device_model={"dim": 16, "layers": 1, "heads": 1}, ratios=(0.0, 1.0),
                        threads=1, workdir=tmp_path, reuse=True)
    said: list[str] = []
    first, _ = run(cfg, said.append)
    assert not any("reusing the cloud model" in m for m in said)
    said.clear()
    again, _ = run(cfg, said.append)
    assert sum("reusing the cloud model" in m for m in said) == 2  # the test and validation clouds
    assert [r.metrics for r in again] == [r.metrics for r in first]
    said.clear()
    run(QualityConfig(**{**cfg.__dict__, "cloud_options": {"window": 3}}), said.append)
    assert not any("reusing the cloud model" in m for m in said)  # other options: trained again


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path: Path) -> None:
    from dcrec.simulator.bench.quality import WorkdirInUse, _workdir_lock

    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=50, baselines=(), workdir=tmp_path)
    with _workdir_lock(tmp_path / "ml-100k"):
        with pytest.raises(WorkdirInUse, match="in use by another bench run"):
            run(cfg)
    assert not (tmp_path / "ml-100k" / "seed0").exists()  # refused before anything was written


def test_the_learned_policy_is_reported_beside_random_and_the_oracle(tmp_path: Path) -> None:
    from dcrec.cloud.models.backends import REUSE_MARKER, _model_key
    from dcrec.shared.data import load_dataset
    from dcrec.shared.splits import stale_cloud_split

    cfg = QualityConfig(dataset="ml-100k", cloud_backend="cooccurrence", device_epochs=1, max_users=300,
                        baselines=(), device_model={"dim": 16, "layers": 1, "heads": 1},
                        ratios=(0.05, 0.2), neighbours=10, threads=1, workdir=tmp_path)
    rows, infos = run(cfg)
    by = {(r.variant, r.ratio): r.metrics for r in rows}
    for ratio in (0.05, 0.2):
        learned, oracle, random_ = by[("learned", ratio)], by[("oracle", ratio)], by[("random", ratio)]
        assert oracle["NDCG@10"] >= max(learned["NDCG@10"], random_["NDCG@10"])
        assert learned["vs_random_lo"] <= learned["vs_random"] <= learned["vs_random_hi"]
        assert learned["measured_ratio"] <= ratio + 2.0 / 300 + 1e-9  # the bucket holds
        assert "vs_disagreement" in learned and "oracle_share" in learned
    assert -1.0 <= infos[0]["qini_learned"] <= 1.0 and -1.0 <= infos[0]["qini_disagreement"] <= 1.0
    assert infos[0]["request_model"]["features"]
    # the request model's cloud saw neither the events since its lists nor their labels
    ds = load_dataset("ml-100k")
    train = stale_cloud_split(ds, lag=cfg.lag).train
    marker = json.loads((tmp_path / "ml-100k" / "seed0" / "cloud-request" / REUSE_MARKER).read_text())
    prefixes = prefixes_for(300)
    assert prefixes == 8  # few validation users: earlier prefixes of each are replayed too
    trimmed = [q[: len(q) - cfg.lag - prefixes] for q in train if len(q) - cfg.lag - prefixes >= 2]
    assert marker == _model_key(ds, "cooccurrence", {}, trimmed)
    with np.load(tmp_path / "ml-100k" / "seed0" / "request-value.npz") as saved:
        assert saved["x_valid"].shape == (infos[0]["request_rows"], len(infos[0]["request_model"]["features"]))
        assert 300 * 7 < infos[0]["request_rows"] <= 300 * prefixes


def test_earlier_prefixes_shift_history_target_and_view_together() -> None:
    from dcrec.shared.splits import EvalSet

    valid = EvalSet(np.array([0, 1]), [np.array([1, 2, 3, 4, 5]), np.array([7, 8])], np.array([6, 9]),
                    [np.array([1, 2, 3]), np.array([7])])
    two = earlier(valid, 2, lag=2)
    assert two.users.tolist() == [0]  # user 1 is too short to go back two events
    assert two.histories[0].tolist() == [1, 2, 3] and two.targets.tolist() == [4]
    assert two.cloud_histories[0].tolist() == [1]
    assert prefixes_for(22363) == 1 and prefixes_for(943) == 8 and prefixes_for(5000) == 4
