"""``dcrec bench quality``: the offline quality harness."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dcrec.shared.cliutil import (
    non_negative_float,
    non_negative_int,
    options,
    positive_float,
    positive_int,
)


def cmd_quality(ns: argparse.Namespace) -> int:
    from dcrec.simulator.bench import report
    from dcrec.simulator.bench.quality import QualityConfig, run

    cfg = QualityConfig(dataset=ns.dataset, seeds=ns.seeds, cloud_backend=ns.cloud_backend,
                        cloud_options=options(ns.cloud_option),
                        device_epochs=ns.epochs, device_time_budget_s=ns.time_budget,
                        max_users=ns.users, workdir=Path(ns.workdir), measure=ns.measure,
                        measure_top=ns.measure_top, jobs=ns.jobs, threads=ns.threads,
                        baseline_seeds=ns.baseline_seeds, device_batch_size=ns.batch_size,
                        device_patience=ns.patience, candidates=ns.candidates,
                        device_model=options(ns.device_option), reuse=ns.reuse,
                        device_objective=ns.device_objective, device_folds=ns.device_folds,
                        device_full_weight=ns.device_full_weight,
                        device_missing_target=ns.device_missing_target,
                        device_candidates=ns.device_candidates, neighbours=ns.neighbours,
                        device_distill_weight=ns.device_distill_weight,
                        device_distill_temperature=ns.device_distill_temperature,
                        device_folds_hold_out_valid=ns.device_folds_hold_out_valid,
                        baselines=tuple(ns.baseline) if ns.baseline else QualityConfig.baselines)
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    rows, infos = run(cfg, say)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(ns.dataset).name
    table = report.markdown(rows)
    (out / f"quality-{name}.md").write_text(table + "\n")
    report.write_csv(rows, out / f"quality-{name}.csv")
    report.plot(rows, out / f"quality-{name}.png", f"{name}: NDCG@10 against request ratio")
    (out / f"quality-{name}.json").write_text(json.dumps(infos, indent=2, default=float))
    print(table)
    print(f"\n{len(rows)} rows, {cfg.seeds} seed(s), {time.perf_counter() - start:.0f}s; "
          f"fusion weights (stale/fresh lists): "
          + ", ".join(f"{i['alpha_stale']}/{i['alpha_fresh']}" for i in infos)
          + f"; written to {out}/quality-{name}.{{md,csv,png,json}}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="offline benchmarks").add_subparsers(dest="sub", required=True)
    q = bench.add_parser("quality", help="every variant of the stale-cloud protocol, side by side")
    q.add_argument("--dataset", default="ml-100k", help="ml-100k, beauty, or a path")
    q.add_argument("--seeds", type=positive_int, default=1)
    q.add_argument("--cloud-backend", default="cooccurrence")
    q.add_argument("--cloud-option", action="append", default=[], metavar="KEY=VALUE",
                   help="the cloud backend's training options (e.g. time_budget_min=12)")
    q.add_argument("--epochs", type=positive_int, default=200, help="device-model epochs (early stopping)")
    q.add_argument("--time-budget", type=positive_float, default=1200.0,
                   help="seconds of training per device model")
    q.add_argument("--measure", default="regret",
                   choices=["regret", "uncovered", "rbo", "footrule", "kendall", "coverage"],
                   help="disagreement signal the request policy thresholds")
    q.add_argument("--measure-top", type=positive_int, default=20,
                   help="depth: rbo's prefix, or coverage's device top-k")
    q.add_argument("--candidates", type=positive_int, default=100, help="length of the cloud's list")
    q.add_argument("--batch-size", type=positive_int, default=256, help="device-model training batch")
    q.add_argument("--patience", type=positive_int, default=3, help="epochs without validation gain")
    q.add_argument("--device-option", action="append", default=[], metavar="KEY=VALUE",
                   help="SASRec setting, e.g. dropout=0.2 or dim=64 (JSON values)")
    q.add_argument("--device-objective", choices=["full", "collab", "random"], default="full",
                   help="full: SASRec over the catalogue; collab / random: then trained again "
                        "on the cloud's lists / on random negatives")
    q.add_argument("--device-folds", type=positive_int, default=3,
                   help="collab: out-of-fold cloud lists from this many refits of the cloud")
    q.add_argument("--device-full-weight", type=non_negative_float, default=1.0,
                   help="collab: weight of the full-catalogue term beside the listwise one")
    q.add_argument("--device-missing-target", choices=["ignore", "insert"], default="ignore",
                   help="collab: a cloud list without the target trains only the full term "
                        "(ignore) or gets the target inserted (insert)")
    q.add_argument("--device-distill-weight", type=non_negative_float, default=0.0,
                   help="collab / random: weight of distillation towards the cloud's distribution "
                        "over its fresh list for each training prefix (0: off)")
    q.add_argument("--device-distill-temperature", type=non_negative_float, default=0.0,
                   help="temperature of the cloud's soft labels (0: its scores normalised)")
    q.add_argument("--device-folds-hold-out-valid", action="store_true",
                   help="collab / distillation: fit the out-of-fold clouds without each "
                        "sequence's last item (the validation targets)")
    q.add_argument("--device-candidates", type=non_negative_int, default=0, metavar="K",
                   help="add the device model's own top K unseen items to every cloud list "
                        "before fusion (the runtime's device_candidates)")
    q.add_argument("--neighbours", type=non_negative_int, default=0, metavar="K",
                   help="the device blends stale lists with local lists from the cloud's "
                        "neighbour index of K items per item (0: off)")
    q.add_argument("--reuse", action="store_true",
                   help="reuse models in --workdir trained with the same settings")
    q.add_argument("--jobs", type=positive_int, default=1,
                   help="worker processes: seeds and baselines train side by side")
    q.add_argument("--threads", type=positive_int, help="torch threads per worker (default: cores / jobs)")
    q.add_argument("--baseline-seeds", type=positive_int,
                   help="train the leave-one-out baselines for only the first N seeds")
    q.add_argument("--users", type=positive_int, help="evaluate a sample of this many users")
    q.add_argument("--baseline", action="append", help="LOO baselines (default: all)")
    q.add_argument("--workdir", default="runs/bench")
    q.add_argument("--out", default="runs/bench/results")
    q.set_defaults(fn=cmd_quality)
