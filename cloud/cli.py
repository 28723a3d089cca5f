"""``dcrec cloud ...``: train, serve and publish."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared.cliutil import data_args, load_split, options


def cmd_cloud_train(ns: argparse.Namespace) -> int:
    from cloud import backends

    ds, split = load_split(ns.dataset, ns.cloud_fraction)
    start = time.perf_counter()
    out = backends.train(ns.backend, ds, split.cloud_sequences(), ns.out, options(ns.option),
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



def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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

