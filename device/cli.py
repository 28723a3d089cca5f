"""``dcrec device ...``: train and export the reranker (needs the cloud extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.cliutil import data_args, load_split, options
from shared.progress import Progress


def cmd_device_train(ns: argparse.Namespace) -> int:
    from device.training.train import TrainConfig, train_sasrec

    ds, split = load_split(ns.dataset, ns.cloud_fraction)
    bar = Progress("device train", ns.epochs)
    config = TrainConfig(epochs=ns.epochs, time_budget_s=ns.time_budget, seed=ns.seed,
                         model=options(ns.option))
    result = train_sasrec(split.cloud_sequences(), ds.n_items, config, ns.out,
                          progress=lambda e, loss, m: bar.update(
                              e, f"loss {loss:.3f} valid NDCG@10 {m.get('NDCG@10', 0):.4f}"))
    bar.close()
    print(f"device model: best epoch {result.best_epoch}, valid NDCG@10 "
          f"{result.valid.get('NDCG@10', 0):.4f}, {result.seconds:.0f}s -> {result.checkpoint}")
    return 0


def cmd_device_export(ns: argparse.Namespace) -> int:
    from device.training.export import export_onnx
    from device.training.train import load_sasrec

    model = load_sasrec(ns.model_dir)
    out = Path(ns.out or Path(ns.model_dir) / "model.onnx")
    export_onnx(model, out)
    config = {"max_len": model.cfg.max_len, "n_items": model.cfg.n_items, "arch": "sasrec"}
    out.with_suffix(".json").write_text(json.dumps(config, indent=2))
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB), ONNX matches torch within 1e-4")
    if ns.registry:
        from cloud.registry import ModelRegistry

        version = ModelRegistry(ns.registry).publish(out, config)
        print(f"published as device model {version}")
    return 0



def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    device = sub.add_parser("device", help="the on-device reranker").add_subparsers(dest="sub", required=True)
    q = device.add_parser("train", help="train the SASRec reranker")
    data_args(q)
    q.add_argument("--out", required=True)
    q.add_argument("--epochs", type=int, default=30)
    q.add_argument("--time-budget", type=float, default=600.0, help="seconds")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model settings, e.g. dim=64 layers=2")
    q.set_defaults(fn=cmd_device_train)
    q = device.add_parser("export", help="export the trained reranker to ONNX")
    q.add_argument("--model-dir", required=True)
    q.add_argument("--out")
    q.add_argument("--registry", help="also publish to this registry")
    q.set_defaults(fn=cmd_device_export)

