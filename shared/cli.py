"""The ``dcrec`` command line: train, export, serve, simulate, demo.

Heavy imports (torch, the server) happen inside each command, so ``dcrec
--help`` is instant and device-only installs can run the device commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from shared.progress import Progress

log = logging.getLogger("dcrec")


def _options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs with JSON values where they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--option {pair!r}: expected key=value")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _load_split(dataset: str, cloud_fraction: float):  # type: ignore[no-untyped-def]
    from shared.data import load_dataset
    from shared.splits import time_split

    ds = load_dataset(dataset)
    print(f"data: {ds.describe()}", file=sys.stderr)
    return ds, time_split(ds, cloud_fraction)


# --- cloud ------------------------------------------------------------------------------------
def cmd_cloud_train(ns: argparse.Namespace) -> int:
    from cloud import backends

    ds, split = _load_split(ns.dataset, ns.cloud_fraction)
    start = time.perf_counter()
    out = backends.train(ns.backend, ds, split.cloud_sequences(), ns.out, _options(ns.option),
                         resume=ns.resume)
    manifest = backends.read_manifest(out)
    print(f"cloud model {manifest['version']} ({ns.backend}) written to {out} "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_cloud_serve(ns: argparse.Namespace) -> int:
    from cloud.backends import load_generator
    from cloud.registry import ModelRegistry
    from cloud.server import ServerConfig, serve
    from cloud.service import CandidateService, ServiceConfig

    generator = load_generator(ns.model_dir)
    service = CandidateService(generator, ServiceConfig(ttl_seconds=ns.ttl))
    registry = ModelRegistry(ns.registry) if ns.registry else None

    def announce(port: int) -> None:
        print(f"serving on port {port}", file=sys.stderr, flush=True)
        if ns.ready_file:  # written atomically so a waiting parent never reads half a number
            tmp = Path(ns.ready_file + ".tmp")
            tmp.write_text(str(port))
            tmp.replace(ns.ready_file)

    serve(ns.address, service, registry, ServerConfig(max_workers=ns.workers, grace_s=ns.grace),
          announce)
    return 0


def cmd_cloud_publish(ns: argparse.Namespace) -> int:
    from cloud.registry import ModelRegistry

    config = json.loads(Path(ns.config).read_text()) if ns.config else {}
    version = ModelRegistry(ns.registry).publish(ns.model, config, ns.version)
    print(f"published device model {version} to {ns.registry}")
    return 0


# --- device -----------------------------------------------------------------------------------
def cmd_device_train(ns: argparse.Namespace) -> int:
    from device.training.train import TrainConfig, train_sasrec

    ds, split = _load_split(ns.dataset, ns.cloud_fraction)
    bar = Progress("device train", ns.epochs)
    config = TrainConfig(epochs=ns.epochs, time_budget_s=ns.time_budget, seed=ns.seed,
                         model=_options(ns.option))
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


# --- simulate and demo ------------------------------------------------------------------------
def cmd_simulate(ns: argparse.Namespace) -> int:
    from simulator.run import SimulationSpec, print_table, run_simulations

    spec = SimulationSpec(dataset=ns.dataset, cloud_fraction=ns.cloud_fraction,
                          cloud_model=Path(ns.cloud_model) if ns.cloud_model else None,
                          registry=Path(ns.registry) if ns.registry else None,
                          connect=ns.connect, workdir=Path(ns.workdir), policies=ns.policy,
                          threshold=ns.threshold, alpha=ns.alpha, max_users=ns.users,
                          ttl=ns.ttl)
    results = run_simulations(spec)
    print_table(results)
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from simulator.demo import run_demo

    return run_demo(Path(ns.workdir), ns.dataset, quick=ns.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcrec", description="Device-cloud collaborative recommendation.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dataset", default="ml-100k", help="ml-100k, beauty, or a path")
        q.add_argument("--cloud-fraction", type=float, default=0.8,
                       help="share of each user's events the cloud trains on (per-user time split)")

    cloud = sub.add_parser("cloud", help="the cloud recommender").add_subparsers(dest="sub", required=True)
    q = cloud.add_parser("train", help="train a candidate generator")
    data_args(q)
    q.add_argument("--backend", default="cooccurrence")
    q.add_argument("--out", required=True)
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--resume", action="store_true")
    q.set_defaults(fn=cmd_cloud_train)
    q = cloud.add_parser("serve", help="serve GetCandidates and device models over gRPC")
    q.add_argument("--model-dir", required=True)
    q.add_argument("--registry", help="device-model registry folder")
    q.add_argument("--address", default="127.0.0.1:50051", help="host:port; port 0 picks a free one")
    q.add_argument("--ready-file", help="write the bound port here once serving")
    q.add_argument("--ttl", type=float, default=86400.0, help="list time-to-live, seconds")
    q.add_argument("--workers", type=int, default=16)
    q.add_argument("--grace", type=float, default=5.0, help="shutdown grace period, seconds")
    q.set_defaults(fn=cmd_cloud_serve)
    q = cloud.add_parser("publish", help="publish an ONNX device model to the registry")
    q.add_argument("--registry", required=True)
    q.add_argument("--model", required=True)
    q.add_argument("--config", help="JSON file with the model's settings (max_len, ...)")
    q.add_argument("--version")
    q.set_defaults(fn=cmd_cloud_publish)

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

    q = sub.add_parser("simulate", help="replay a fleet of devices against a real cloud server")
    data_args(q)
    q.add_argument("--cloud-model", help="model directory to serve (starts a server)")
    q.add_argument("--registry", help="device-model registry the started server hands out")
    q.add_argument("--connect", help="use a running server at host:port instead")
    q.add_argument("--workdir", default="runs/simulate")
    q.add_argument("--policy", action="append", choices=["disagreement", "always", "never"],
                   help="request policy; repeat to compare (default: disagreement)")
    q.add_argument("--threshold", type=float, default=0.95,
                   help="disagreement (1 - rank-biased overlap of the top 20) that triggers a request")
    q.add_argument("--alpha", type=float, default=0.5, help="cloud weight in fusion")
    q.add_argument("--users", type=int, help="replay only this many users")
    q.add_argument("--ttl", type=float, default=86400.0)
    q.set_defaults(fn=cmd_simulate)

    q = sub.add_parser("demo", help="train both models, serve, simulate, report")
    q.add_argument("--dataset", default="ml-100k")
    q.add_argument("--workdir", default="runs/demo")
    q.add_argument("--quick", action="store_true", help="fewer epochs and users (smoke run)")
    q.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(ns.fn(ns) or 0)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"dcrec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
