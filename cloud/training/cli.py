"""``dcrec device train | train-reranker | export | bench-latency``: the device models, trained and
exported on the cloud's side (torch: the cloud extra). Registered into the ``device`` area."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dcrec.cloud.models.backends import DEFAULT_BACKEND
from dcrec.shared.cliutil import (
    UsageError,
    area,
    config_options,
    data_args,
    int_at_least,
    key_value,
    load_split,
    non_negative_int,
    options,
    positive_float,
    positive_int,
)
from dcrec.shared.progress import Progress


def cmd_device_train(ns: argparse.Namespace) -> int:
    from dcrec.cloud.training.sasrec import SASRecConfig
    from dcrec.cloud.training.train import TrainConfig, train_sasrec

    # n_items is the catalogue's, known once the data is loaded; 1 lets the rest be checked now.
    model = config_options(options(ns.option), SASRecConfig, "--option", n_items=1)
    ds, split = load_split(ns.dataset, ns.cloud_fraction)
    bar = Progress("device train", ns.epochs)
    config = TrainConfig(epochs=ns.epochs, time_budget_s=ns.time_budget, seed=ns.seed, model=model,
                         threads=ns.threads)
    result = train_sasrec(split.cloud_sequences(), ds.n_items, config, ns.out,
                          progress=lambda e, loss, m: bar.update(
                              e, f"loss {loss:.3f} valid NDCG@10 {m.get('NDCG@10', 0):.4f}"))
    bar.close()
    print(f"device model: best epoch {result.best_epoch}, valid NDCG@10 "
          f"{result.valid.get('NDCG@10', 0):.4f}, {result.seconds:.0f}s -> {result.checkpoint}")
    return 0


def _load_any(model_dir: str) -> tuple[object, str]:
    """A trained reranker from ``train-reranker`` (reranker.json) or the legacy ``train`` (sasrec.json)."""
    d = Path(model_dir)
    if (d / "reranker.json").is_file():
        from dcrec.cloud.training import archs

        model, meta = archs.load(d)
        return model, str(meta["arch"])
    from dcrec.cloud.training.train import load_sasrec

    return load_sasrec(d), "sasrec"


def cmd_device_export(ns: argparse.Namespace) -> int:
    from dcrec.cloud.training.export import export_onnx, quantize_int8

    if ns.neighbours and not ns.registry:
        raise UsageError("--neighbours releases an index with the model: it needs --registry")
    model, arch = _load_any(ns.model_dir)
    out = Path(ns.out or Path(ns.model_dir) / "model.onnx")
    export_onnx(model, out)  # type: ignore[arg-type]
    config = {"max_len": model.cfg.max_len, "n_items": model.cfg.n_items, "arch": arch}  # type: ignore[attr-defined]
    out.with_suffix(".json").write_text(json.dumps(config, indent=2))
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB), ONNX matches torch within 1e-4")
    if ns.int8:
        q = quantize_int8(out, out.with_name(out.stem + ".int8.onnx"))
        print(f"int8 variant {q} ({q.stat().st_size / 1e6:.2f} MB)")
    if ns.registry:
        from dcrec.cloud.releases.registry import ModelRegistry

        version = ModelRegistry(ns.registry).publish(out, config, neighbours=ns.neighbours)
        index = f" with the neighbour index {ns.neighbours}" if ns.neighbours else ""
        print(f"published as device model {version}{index}")
    return 0


def split_sequences(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(dataset, training sequences, split) for the chosen protocol."""
    from dcrec.shared.data import load_dataset
    from dcrec.shared.splits import stale_cloud_split, time_split

    ds = load_dataset(ns.dataset)
    print(f"data: {ds.describe()}", file=sys.stderr)
    if ns.split == "stale":
        split = stale_cloud_split(ds, lag=ns.lag)
        return ds, split.train, split
    split = time_split(ds, ns.cloud_fraction)
    return ds, [s for s in split.cloud_sequences() if len(s) >= 2], split


def load_cloud(ns: argparse.Namespace, ds, train):  # type: ignore[no-untyped-def]
    from dcrec.cloud.models import backends

    if ns.cloud_model:
        return backends.load_generator(ns.cloud_model)
    out = Path(ns.out if hasattr(ns, "out") and ns.out else ns.workdir) / "cloud"
    print(f"training a {ns.cloud_backend} cloud model on the cloud's view -> {out}", file=sys.stderr)
    return backends.load_generator(backends.train(ns.cloud_backend, ds, train, out))


def cmd_train_reranker(ns: argparse.Namespace) -> int:
    from dcrec.cloud.training import archs
    from dcrec.cloud.training.collab import RerankTrainConfig, backend_fitter, train_reranker

    extra = options(ns.train_option, "--train-option")
    if isinstance(extra.get("lags"), list):
        extra["lags"] = tuple(extra["lags"])
    flags = dict(objective=ns.objective, candidates=ns.candidates, epochs=ns.epochs,
                 time_budget_s=ns.time_budget, seed=ns.seed, init_from=ns.init_from, folds=ns.folds)
    config_options(extra, RerankTrainConfig, "--train-option", **flags, model={})
    # n_items is the catalogue's, known once the data is loaded; 1 lets the rest be checked now.
    model = config_options(options(ns.option), archs.ARCHS[ns.arch][1], "--option", n_items=1)
    ds, train, _ = split_sequences(ns)
    gen = load_cloud(ns, ds, train)
    config = RerankTrainConfig(**flags, model=model, **extra)
    fit = backend_fitter(ns.cloud_backend, ds, Path(ns.out) / "folds") if ns.folds > 1 else None
    bar = Progress(f"{ns.arch}/{ns.objective}", ns.epochs)
    res = train_reranker(ns.arch, train, gen, ds.n_items, config, ns.out, fit_generator=fit,
                         progress=lambda e, loss, m: bar.update(
                             e, f"loss {loss:.3f} valid rerank NDCG@10 {m.get('NDCG@10', 0):.4f}"))
    bar.close()
    print(f"{ns.arch} ({ns.objective}): best epoch {res.best_epoch}, valid rerank NDCG@10 "
          f"{res.valid.get('NDCG@10', 0):.4f}, {res.seconds:.0f}s -> {res.model_dir}")
    return 0


def cmd_bench_latency(ns: argparse.Namespace) -> int:
    from dcrec.cloud.training.bench_latency import bench_latency, format_rows

    if ns.model_dir:
        model, arch = _load_any(ns.model_dir)
    else:
        import torch

        from dcrec.cloud.training import archs

        torch.manual_seed(ns.seed)
        arch = ns.arch
        model = archs.build(arch, ns.items)
    rows = bench_latency(model, ns.workdir, candidates=ns.candidates, history=ns.history,
                         calls=ns.calls, threads=ns.threads, seed=ns.seed, neighbours=ns.neighbours)
    print(f"{arch}: {ns.candidates} candidates, {ns.history}-item history, batch 1, "
          f"{ns.calls} calls per engine, {ns.threads} thread(s)")
    print(format_rows(rows))
    return 0


def protocol_args(q: argparse.ArgumentParser) -> None:
    data_args(q)
    q.add_argument("--split", choices=["stale", "time"], default="stale",
                   help="stale: LSC4Rec's device-cloud split; time: per-user time split")
    q.add_argument("--lag", type=non_negative_int, default=2, help="items the cloud's view trails (stale split)")
    q.add_argument("--cloud-model", help="trained cloud model directory (default: train one)")
    q.add_argument("--cloud-backend", default=DEFAULT_BACKEND,
                   help=f"candidate generator backend (default {DEFAULT_BACKEND}; cooccurrence is the fast baseline)")
    q.add_argument("--seed", type=non_negative_int, default=0)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    device = area(sub, "device")
    q = device.add_parser("train", help="train the SASRec reranker (full softmax, time split)")
    data_args(q)
    q.add_argument("--out", required=True)
    q.add_argument("--epochs", type=positive_int, default=30)
    q.add_argument("--time-budget", type=positive_float, default=600.0, help="seconds")
    q.add_argument("--seed", type=non_negative_int, default=0)
    q.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                   help="model settings, e.g. dim=64 layers=2")
    q.set_defaults(fn=cmd_device_train)

    q = device.add_parser("train-reranker",
                          help="train sasrec/gru4rec/din on cloud lists (collab) or a baseline objective")
    protocol_args(q)
    q.add_argument("--arch", choices=["sasrec", "gru4rec", "din"], default="sasrec")
    q.add_argument("--objective", choices=["collab", "random", "full"], default="collab")
    q.add_argument("--init-from", help="warm start from this trained model directory")
    q.add_argument("--folds", type=positive_int, default=1, help="out-of-fold cloud lists (refits the cloud)")
    q.add_argument("--candidates", type=int_at_least(2), default=100,
                   help="list length per training example (>= 2)")
    q.add_argument("--epochs", type=positive_int, default=30)
    q.add_argument("--time-budget", type=positive_float, default=1800.0, help="seconds")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                   help="model settings, e.g. dim=64 max_len=20")
    q.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                   help="RerankTrainConfig fields, e.g. full_weight=1.0 lr=0.0005 max_examples=20000")
    q.add_argument("--out", required=True)
    q.set_defaults(fn=cmd_train_reranker)

    q = device.add_parser("export", help="export a trained reranker to ONNX (optionally int8 too)")
    q.add_argument("--model-dir", required=True)
    q.add_argument("--out")
    q.add_argument("--int8", action="store_true", help="also write model.int8.onnx")
    q.add_argument("--registry", help="also publish to this registry")
    q.add_argument("--neighbours", help="release the cloud's neighbour index (dcrec cloud neighbours) "
                                        "with the model (needs --registry)")
    q.set_defaults(fn=cmd_device_export)

    q = device.add_parser("bench-latency", help="ONNX Runtime vs torch eager per-event reranking latency")
    q.add_argument("--model-dir", help="trained model (default: an untrained one of --arch)")
    q.add_argument("--arch", choices=["sasrec", "gru4rec", "din"], default="sasrec")
    q.add_argument("--items", type=positive_int, default=12101, help="catalogue size of an untrained model")
    q.add_argument("--candidates", type=positive_int, default=100)
    q.add_argument("--history", type=positive_int, default=50)
    q.add_argument("--calls", type=positive_int, default=2000)
    q.add_argument("--threads", type=positive_int, default=1)
    q.add_argument("--seed", type=non_negative_int, default=0)
    q.add_argument("--neighbours", help="a neighbour index: also time the local list and blend")
    q.add_argument("--workdir", default="runs/bench-latency")
    q.set_defaults(fn=cmd_bench_latency)
