"""The offline evaluations' commands: ``dcrec bench quality`` (the quality harness), ``dcrec
device eval-rerank`` (the reranking task) and ``dcrec cloud eval`` (leave-one-out), each
registered into its area."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from dcrec.cloud.models.backends import DEFAULT_BACKEND
from dcrec.cloud.training.cli import protocol_args
from dcrec.shared.cliutil import (
    UsageError,
    area,
    non_negative_float,
    non_negative_int,
    options,
    positive_float,
    positive_int,
    unit_interval,
)


def cmd_quality(ns: argparse.Namespace) -> int:
    from dcrec.shared.system import SystemConfigError, resolve
    from dcrec.simulator.bench import report
    from dcrec.simulator.bench.quality import QualityConfig, run

    try:
        system = resolve(ns.system, ns.override or ())
    except SystemConfigError as e:
        raise UsageError(str(e)) from None
    # What the system sets, unless a flag says otherwise (QualityConfig.of_system).
    given = {"cloud_backend": ns.cloud_backend, "measure": ns.measure, "measure_top": ns.measure_top,
             "candidates": ns.candidates, "device_candidates": ns.device_candidates,
             "neighbours": ns.neighbours}
    base = QualityConfig.of_system(system, **{k: v for k, v in given.items() if v is not None})
    cfg = replace(base, dataset=ns.dataset, seeds=ns.seeds,
                  cloud_options=options(ns.cloud_option),
                  device_epochs=ns.epochs, device_time_budget_s=ns.time_budget,
                  max_users=ns.users, workdir=Path(ns.workdir),
                  jobs=ns.jobs, threads=ns.threads,
                  baseline_seeds=ns.baseline_seeds, device_batch_size=ns.batch_size,
                  device_patience=ns.patience,
                  device_model=options(ns.device_option), reuse=ns.reuse,
                  device_objective=ns.device_objective, device_folds=ns.device_folds,
                  device_full_weight=ns.device_full_weight,
                  device_missing_target=ns.device_missing_target,
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
    table = report.headline(rows, cfg.system, cfg.system_ratio) + "\n\nEvery variant:\n\n" + report.markdown(rows)
    requests = report.requests_table(rows, infos)
    if requests:
        table += "\n\nRequest policies (NDCG@10):\n\n" + requests
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


def cmd_eval_rerank(ns: argparse.Namespace) -> int:
    import numpy as np

    from dcrec.cloud.training.collab import load_scorer
    from dcrec.simulator.bench.rerank_eval import build_lists, evaluate, format_table

    ns.alpha = ns.alpha or [0.5]
    ns.ratio = ns.ratio or [0.05, 0.2]
    if ns.split != "stale":
        raise UsageError("eval-rerank runs the stale-cloud split (--split stale)")
    from dcrec.cloud.training.cli import load_cloud, split_sequences

    ds, train, split = split_sequences(ns)
    gen = load_cloud(ns, ds, train)
    test = split.test
    if ns.max_users and ns.max_users < len(test):
        test = test.take(np.sort(np.random.default_rng(1234).choice(len(test), ns.max_users,
                                                                    replace=False)))
    scorer = load_scorer(ns.model_dir)
    lists = build_lists(gen, test, ns.count, max_len=scorer.max_len)
    for alpha in ns.alpha:
        res = evaluate(lists, scorer, alpha=alpha, ratios=tuple(ns.ratio), scale=ns.scale,
                       measure=ns.measure, seed=ns.seed)
        print(f"\nalpha={alpha} scale={ns.scale} measure={ns.measure} lists={ns.count} "
              f"users={len(test)}")
        print(format_table(res))
    return 0


def cmd_cloud_eval(ns: argparse.Namespace) -> int:
    from dcrec.cloud.models.backends import load_generator
    from dcrec.shared.data import load_dataset
    from dcrec.simulator.bench.cloud_eval import evaluate_loo, markdown, paired_difference

    ds = load_dataset(ns.dataset)
    print(f"data: {ds.describe()}", file=sys.stderr)
    result = evaluate_loo(load_generator(ns.model_dir), ds, ns.count, ns.max_users)
    others = [evaluate_loo(load_generator(d), ds, ns.count, ns.max_users) for d in ns.compare or []]
    print(f"leave-one-out, fresh history, full catalogue through each top-{ns.count} list "
          f"({result.users} users, lists in {result.seconds:.1f}s)\n")
    print(markdown([result, *others]))
    diffs = [paired_difference(result, o) for o in others]
    for d in diffs:
        print(f"\nNDCG@10 {d.model} - {d.baseline}: {d.difference:+.4f} "
              f"[{d.low:+.4f}, {d.high:+.4f}] (95 % paired bootstrap over {d.users} users), "
              f"ratio {d.ratio:.3f}")
    if ns.json:
        Path(ns.json).write_text(json.dumps(
            {**result.summary(), "compared": [o.summary() for o in others],
             "differences": [d.__dict__ for d in diffs]}, indent=2))
    return 0


def cmd_adaptation(ns: argparse.Namespace) -> int:
    from dcrec.simulator.bench.adaptation import markdown, run

    models = Path(ns.models)
    if not (models / "cloud").is_dir() or not (models / "registry").is_dir():
        raise UsageError(f"--models {models}: needs cloud/ and registry/ (what dcrec demo leaves)")
    out = Path(ns.out)
    cells = run(models, out, ns.users, tuple(ns.scenario or ("steady", "engagement")),
                say=lambda s: print(s, file=sys.stderr, flush=True))
    table = markdown(cells)
    (out / "adaptation.md").write_text(table + "\n")
    print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = area(sub, "bench")
    q = bench.add_parser("adaptation", help="the system with and without on-device adaptation, on "
                                            "users whose taste drifts (paired over devices)")
    q.add_argument("--models", default="runs/demo", help="a folder with cloud/ and registry/ (dcrec demo's)")
    q.add_argument("--scenario", action="append", choices=["steady", "engagement"],
                   help="workloads to run (default: both)")
    q.add_argument("--users", type=positive_int, help="users per workload (default: the scenario's)")
    q.add_argument("--out", default="runs/bench-adaptation")
    q.set_defaults(fn=cmd_adaptation)
    q = bench.add_parser("quality", help="every variant of the stale-cloud protocol, side by side")
    q.add_argument("--dataset", default="ml-100k", help="ml-100k, beauty, or a path")
    q.add_argument("--system", metavar="TOML",
                   help="the system to measure (default: the built-in system, dcrec.shared.system); "
                        "the flags below that it sets default to its values")
    q.add_argument("--override", action="append", metavar="NAME",
                   help="a named override of the system, repeatable (cooccurrence, no-index, ...: "
                        "dcrec system show --override NAME)")
    q.add_argument("--seeds", type=positive_int, default=3)
    q.add_argument("--cloud-backend",
                   help=f"candidate generator backend (default: the system's, {DEFAULT_BACKEND}; "
                        "cooccurrence is the fast baseline)")
    q.add_argument("--cloud-option", action="append", default=[], metavar="KEY=VALUE",
                   help="the cloud backend's training options (e.g. time_budget_min=12)")
    q.add_argument("--epochs", type=positive_int, default=200, help="device-model epochs (early stopping)")
    q.add_argument("--time-budget", type=positive_float, default=1200.0,
                   help="seconds of training per device model")
    q.add_argument("--measure",
                   choices=["regret", "uncovered", "rbo", "footrule", "kendall", "coverage"],
                   help="disagreement signal the request policy thresholds (default: the system's)")
    q.add_argument("--measure-top", type=positive_int,
                   help="depth: rbo's prefix, or coverage's device top-k (default: the system's)")
    q.add_argument("--candidates", type=positive_int,
                   help="length of the cloud's list (default: the system's)")
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
    q.add_argument("--device-candidates", type=non_negative_int, metavar="K",
                   help="add the device model's own top K unseen items to every cloud list "
                        "before fusion (the runtime's device_candidates; default: the system's)")
    q.add_argument("--neighbours", type=non_negative_int, metavar="K",
                   help="the device blends stale lists with local lists from the cloud's "
                        "neighbour index of K items per item (0: off; default: the system's)")
    q.add_argument("--reuse", action="store_true",
                   help="reuse models in --workdir trained with the same settings")
    q.add_argument("--jobs", type=positive_int, default=1,
                   help="worker processes: seeds and baselines train side by side")
    q.add_argument("--threads", type=positive_int, help="torch threads per worker (default: cores / jobs)")
    q.add_argument("--baseline-seeds", type=positive_int, default=1,
                   help="train the leave-one-out baselines for only the first N seeds")
    q.add_argument("--users", type=positive_int, help="evaluate a sample of this many users")
    q.add_argument("--baseline", action="append", help="LOO baselines (default: all)")
    q.add_argument("--workdir", default="runs/bench")
    q.add_argument("--out", default="runs/bench/results")
    q.set_defaults(fn=cmd_quality)

    device = area(sub, "device")
    q = device.add_parser("eval-rerank", help="the reranking task offline: every system variant")
    protocol_args(q)
    q.add_argument("--model-dir", required=True)
    q.add_argument("--workdir", default="runs/eval-rerank")
    q.add_argument("--count", type=positive_int, default=100, help="cloud list length")
    q.add_argument("--alpha", type=unit_interval, action="append", help="cloud weight(s) in fusion")
    q.add_argument("--scale", choices=["rank", "zscore"], default="zscore")
    q.add_argument("--measure", choices=["rbo", "footrule", "kendall"], default="rbo",
                   help="order measure of the budgeted variant (catalogue measures such as regret: "
                        "dcrec bench quality)")
    q.add_argument("--ratio", type=unit_interval, action="append", help="request ratio(s) to compare")
    q.add_argument("--max-users", type=positive_int)
    q.set_defaults(fn=cmd_eval_rerank)

    cloud = area(sub, "cloud")
    q = cloud.add_parser("eval", help="leave-one-out metrics of a cloud model (markdown table)")
    q.add_argument("--model-dir", required=True)
    q.add_argument("--dataset", default="ml-100k", help="ml-100k, beauty, or a path")
    q.add_argument("--count", type=positive_int, default=100, help="list length; targets beyond it are misses")
    q.add_argument("--max-users", type=positive_int, help="evaluate a random sample of users")
    q.add_argument("--compare", action="append", metavar="MODEL_DIR",
                   help="another model to evaluate on the same users; prints the NDCG@10 difference "
                        "with a 95 %% paired bootstrap interval (repeatable)")
    q.add_argument("--json", help="also write the result here")
    q.set_defaults(fn=cmd_cloud_eval)
