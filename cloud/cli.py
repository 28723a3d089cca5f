"""``dcrec cloud ...``: train, evaluate, serve, benchmark and publish."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dcrec.cloud.models.backends import DEFAULT_BACKEND
from dcrec.shared.cliutil import (
    UsageError,
    area,
    data_args,
    key_value,
    load_split,
    non_negative_float,
    non_negative_int,
    options,
    positive_float,
    positive_int,
    positive_int_list,
)
from dcrec.shared.cliutil import duration as parse_duration
from dcrec.shared.fileio import write_atomic
from dcrec.shared.system import SYSTEM


def cmd_cloud_train(ns: argparse.Namespace) -> int:
    from dcrec.cloud.models import backends

    ds, split = load_split(ns.dataset, ns.cloud_fraction)
    start = time.perf_counter()
    out = backends.train(ns.backend, ds, split.cloud_sequences(), ns.out, options(ns.option),
                         resume=ns.resume)
    manifest = backends.read_manifest(out)
    print(f"cloud model {manifest['version']} ({ns.backend}) written to {out} "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


def _tls_paths(ns: argparse.Namespace) -> tuple[str | None, str | None]:
    if (ns.tls_cert is None) != (ns.tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key")
    return ns.tls_cert, ns.tls_key


def _write_ready(path: str | None, port: int) -> None:
    if path:  # written atomically so a waiting parent never reads half a number
        write_atomic(path, str(port))


def _batching(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The batch settings from the serve flags, or None (each call alone) for a max size of 1."""
    from dcrec.cloud.serving.batching import BatchConfig

    if ns.batch_max_size == 1:
        return None
    cfg = BatchConfig(max_batch_size=ns.batch_max_size, max_wait_ms=ns.batch_max_wait_ms,
                      max_queue=ns.batch_queue, threads=ns.batch_threads,
                      adaptive=not ns.batch_fixed_wait)
    try:  # the types refuse signs; this refuses the upper bounds (wait, threads)
        cfg.validate()
    except ValueError as e:
        raise UsageError(f"batching flags: {e}") from e
    return cfg


def _serve_replicas(ns: argparse.Namespace) -> int:
    from dcrec.cloud.serving.replicas import Replicas

    replicas = Replicas(ns, ns.processes, ns.address, ns.ready_file, ns.http_address,
                        ns.http_ready_file)
    port = replicas.start()
    print(f"serving on port {port} with {ns.processes} processes", file=sys.stderr, flush=True)
    if replicas.http_ports:
        print(f"operator HTTP on ports {', '.join(map(str, replicas.http_ports))}",
              file=sys.stderr, flush=True)
    return replicas.wait(ns.grace + 10.0)


def cmd_cloud_serve(ns: argparse.Namespace) -> int:
    from dcrec.cloud.models.backends import load_generator
    from dcrec.cloud.releases.registry import CloudModelRegistry, ModelRegistry
    from dcrec.cloud.serving.server import ServerConfig, TlsConfig, serve
    from dcrec.cloud.serving.service import CandidateService, ServiceConfig

    batching = _batching(ns)
    cert, key = _tls_paths(ns)
    if not ns.insecure and (cert is None or ns.auth_secret is None):
        raise UsageError("a production server needs --tls-cert/--tls-key and --auth-secret; "
                         "pass --insecure for a plaintext development server")
    if ns.tls_client_ca and cert is None:
        raise UsageError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if ns.trusted_key and not ns.registry:
        raise UsageError("--trusted-key checks device-model releases: give --registry too")
    if not ns.model_dir and not ns.cloud_registry:
        raise UsageError("give --model-dir or --cloud-registry")
    cloud_registry = CloudModelRegistry(ns.cloud_registry) if ns.cloud_registry else None
    if cloud_registry is not None and not ns.model_dir:
        live = cloud_registry.current_version()
        if live is None:
            raise ValueError(f"cloud registry {ns.cloud_registry} has no live model")
        model_dir = cloud_registry.path(live)
    else:
        model_dir = Path(ns.model_dir)
    if ns.processes != 1:  # checked above, in the parent, so a bad flag fails before any spawn
        return _serve_replicas(ns)
    generator = load_generator(model_dir)
    service = CandidateService(generator, ServiceConfig(ttl_seconds=ns.ttl))
    signer = None
    if ns.signing_key:
        from dcrec.cloud.releases.signing import Signer

        signer = Signer.from_file(ns.signing_key)
    trusted = None
    if ns.trusted_key:
        from dcrec.shared.signatures import load_trusted_keys

        trusted = load_trusted_keys(ns.trusted_key)
    # With a signing key or trusted keys, a release is served only once its signature verifies.
    registry = ModelRegistry(ns.registry, signer, trusted) if ns.registry else None
    if registry is not None and registry.trusted is None and not ns.insecure:
        print("warning: device-model releases are served without checking their signatures "
              "(give --trusted-key or --signing-key)", file=sys.stderr, flush=True)
    authority = None
    if ns.auth_secret:
        from dcrec.cloud.serving.auth import TokenAuthority

        authority = TokenAuthority.from_file(ns.auth_secret)
    tls = TlsConfig(cert, key, ns.tls_client_ca) if cert and key else None
    # A queued call holds its handler thread, so a batching server needs threads for whole batches.
    workers = ns.workers or (max(16, 2 * batching.max_batch_size) if batching else 16)
    config = ServerConfig(max_workers=workers, grace_s=ns.grace, batching=batching, tls=tls,
                          insecure=ns.insecure, auth_required=not ns.insecure,
                          max_inflight=ns.max_inflight, max_request_bytes=ns.max_request_bytes,
                          reflection=ns.reflection)
    http = None
    if ns.http_address:
        from dcrec.cloud.serving.http.runner import HttpConfig

        # The HTTP port gets the gRPC port's TLS, mutual TLS included: no plaintext side door.
        http = HttpConfig(ns.http_address, cert, key, ns.tls_client_ca)

    def announce(port: int) -> None:
        print(f"serving on port {port}", file=sys.stderr, flush=True)
        _write_ready(ns.ready_file, port)

    def announce_http(port: int) -> None:
        print(f"operator HTTP on port {port}", file=sys.stderr, flush=True)
        _write_ready(ns.http_ready_file, port)

    from dcrec.cloud.serving.device_telemetry import TelemetryConfig

    serve(ns.address, service, registry, config, announce, authority=authority, http=http,
          cloud_registry=cloud_registry, on_http_ready=announce_http,
          device_telemetry=TelemetryConfig(log_path=ns.telemetry_log))
    return 0


def _levels(ns: argparse.Namespace) -> tuple[int, ...]:
    if ns.levels:
        return tuple(ns.levels)
    return tuple(sorted({c for c in (1, 8, ns.clients) if c <= ns.clients}))


def cmd_cloud_bench_hostile(ns: argparse.Namespace) -> int:
    from dcrec.cloud.load.bench_hostile import HostileConfig, markdown, run

    cfg = HostileConfig(model_dir=Path(ns.model_dir), records=ns.records, clients=ns.clients,
                        duration_s=ns.duration, warmup_s=ns.warmup, rounds=ns.rounds,
                        workers=ns.workers, out_dir=Path(ns.out) if ns.out else None)
    result = run(cfg, say=lambda s: print(s, file=sys.stderr, flush=True))
    print(markdown(result))
    print(f"\nrows and settings: {result['config']['out_dir']}/bench-hostile.json")
    return 0


def cmd_cloud_bench_serving(ns: argparse.Namespace) -> int:
    from dcrec.cloud.load.bench_serving import BenchConfig, markdown, run

    cfg = BenchConfig(model_dir=Path(ns.model_dir), levels=_levels(ns), duration_s=ns.duration,
                      warmup_s=ns.warmup, rounds=ns.rounds, batch_max_size=ns.batch_max_size,
                      batch_max_wait_ms=ns.batch_max_wait_ms, workers=ns.workers,
                      count=ns.count, dataset=ns.dataset,
                      out_dir=Path(ns.out) if ns.out else None)
    result = run(cfg, say=lambda s: print(s, file=sys.stderr, flush=True))
    print(markdown(result))
    print(f"\nrows and settings: {result['config']['out_dir']}/bench-serving.json")
    return 0


def cmd_cloud_publish(ns: argparse.Namespace) -> int:
    from dcrec.cloud.releases.registry import ModelRegistry

    config = json.loads(Path(ns.config).read_text()) if ns.config else {}
    from dcrec.shared.system import SystemConfigError, resolve

    try:
        system = resolve(ns.system, ns.override or ())
    except SystemConfigError as e:
        raise UsageError(str(e)) from None
    registry = ModelRegistry(ns.registry, _signer(ns))
    version = registry.publish(ns.model, config, ns.version, make_current=not ns.no_promote,
                               neighbours=ns.neighbours, request_model=ns.request_model,
                               system=system)
    live = " (live)" if not ns.no_promote else ""
    print(f"published device model {version}{live} to {ns.registry}")
    return 0


def cmd_cloud_publish_cloud(ns: argparse.Namespace) -> int:
    from dcrec.cloud.releases.registry import CloudModelRegistry

    version = CloudModelRegistry(ns.registry).publish(ns.model_dir, ns.version,
                                                      make_current=not ns.no_promote)
    print(f"published cloud model {version} to {ns.registry}")
    return 0


def cmd_cloud_request_model(ns: argparse.Namespace) -> int:
    from dcrec.cloud.training.request_value import train_request_model

    ds, split = load_split(ns.dataset, ns.cloud_fraction)
    start = time.perf_counter()
    out = Path(ns.out)
    workdir = Path(ns.workdir) if ns.workdir else out.with_name(out.stem + "-work")
    summary = train_request_model(ds, split.cloud_sequences(), Path(ns.device_model), out, workdir,
                                  ns.backend, options(ns.option),
                                  Path(ns.neighbours) if ns.neighbours else None, users=ns.users,
                                  max_lag=ns.max_lag, seed=ns.seed,
                                  say=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"request model from {summary['users']} replayed users (a fresh list helped "
          f"{summary['helped']:.1%}, hurt {summary['hurt']:.1%}) written to {out} in "
          f"{time.perf_counter() - start:.0f}s")
    return 0


def cmd_cloud_neighbours(ns: argparse.Namespace) -> int:
    from dcrec.cloud.models import backends
    from dcrec.cloud.models.neighbours import build

    index = build(backends.load_generator(ns.model_dir), ns.neighbours)
    sha256 = index.save(ns.out)
    size = Path(ns.out).stat().st_size
    print(f"neighbour index of {index.cloud_version}: {index.n_items} items x {index.neighbours} "
          f"neighbours, {size / 2**20:.1f} MiB, sha256 {sha256[:12]} -> {ns.out}")
    return 0


def _signer(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    if not getattr(ns, "signing_key", None):
        return None
    from dcrec.cloud.releases.signing import Signer

    return Signer.from_file(ns.signing_key)


def cmd_cloud_models(ns: argparse.Namespace) -> int:
    from dcrec.cloud.releases.registry import CloudModelRegistry, ModelRegistry

    reg = (ModelRegistry(ns.registry, _signer(ns)) if ns.kind == "device"
           else CloudModelRegistry(ns.registry))
    if ns.action == "list":
        for v in reg.describe():
            print(f"{'*' if v['current'] else ' '} {v['version']}  {v['bytes']} bytes")
        print(f"live release: {reg.current_sequence()}")
    elif ns.action == "promote":
        print(f"{ns.kind} model {ns.version} live as release {reg.promote(ns.version)}")
    else:
        version, seq = reg.rollback()
        print(f"{ns.kind} model rolled back to {version} as release {seq}")
    if ns.action != "list" and ns.kind == "cloud":
        print("a running server applies cloud releases made here at its next start; "
              "use POST /api/models/cloud/... to switch a live server", file=sys.stderr)
    return 0


def cmd_cloud_token(ns: argparse.Namespace) -> int:
    from dcrec.cloud.serving.auth import TokenAuthority

    authority = TokenAuthority.from_file(ns.auth_secret)
    role = "device" if ns.device_id else "operator"  # argparse requires exactly one of the two
    print(authority.issue(ns.device_id or ns.operator, ns.ttl, role))
    return 0


def cmd_cloud_keygen(ns: argparse.Namespace) -> int:
    if not ns.auth_secret and not ns.signing_dir:
        raise UsageError("give --auth-secret FILE and/or --signing-dir DIR")
    for existing in (ns.auth_secret, ns.signing_dir and Path(ns.signing_dir) / "signing.pem"):
        if existing and Path(existing).exists():
            raise ValueError(f"{existing} exists; refusing to overwrite a key")
    if ns.auth_secret:
        from dcrec.cloud.serving.auth import write_secret

        print(f"auth secret written to {write_secret(ns.auth_secret)}")
    if ns.signing_dir:
        from dcrec.cloud.releases.signing import write_keypair

        private, public = write_keypair(ns.signing_dir)
        print(f"signing key {private} (keep secret); devices trust {public}")
    return 0


def _models_parsers(cloud: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud models list|promote|rollback``: each action its own parser, so each has its own --help."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kind", choices=["device", "cloud"], default="device")
    common.add_argument("--registry", required=True, help="the registry folder")
    common.add_argument("--signing-key", help="device releases: Ed25519 private key (PEM)")
    models = cloud.add_parser("models", help="list, promote or roll back registry models on disk"
                              ).add_subparsers(dest="action", required=True, metavar="ACTION")
    models.add_parser("list", parents=[common], help="the versions on disk and the live release")
    q = models.add_parser("promote", parents=[common], help="make a version live as a new release")
    q.add_argument("--version", required=True, help="the version to make live")
    models.add_parser("rollback", parents=[common],
                      help="make the previous release's version live again, as a new release")
    for q in models.choices.values():
        q.set_defaults(fn=cmd_cloud_models)


def _train_parser(cloud: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud train``: a candidate generator from a data set."""
    q = cloud.add_parser("train", help="train a candidate generator")
    data_args(q)
    q.add_argument("--backend", default=DEFAULT_BACKEND,
                   help=f"candidate generator backend (default {DEFAULT_BACKEND}; cooccurrence is the fast baseline)")
    q.add_argument("--out", required=True)
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=key_value)
    q.add_argument("--resume", action="store_true")
    q.set_defaults(fn=cmd_cloud_train)


def _serve_parser(cloud: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud serve``: the gRPC server, its HTTP surface, TLS, tokens and limits."""
    q = cloud.add_parser("serve", help="serve GetCandidates and device models over gRPC")
    q.add_argument("--model-dir", help="the cloud model (or use --cloud-registry)")
    q.add_argument("--cloud-registry", help="cloud-model registry folder; serves its live version")
    q.add_argument("--registry", help="device-model registry folder")
    q.add_argument("--signing-key", help="Ed25519 private key (PEM) that signs device-model "
                                          "releases; its public key also verifies them before serving")
    q.add_argument("--trusted-key", action="append", default=[], metavar="PUB_PEM",
                   help="Ed25519 public key (PEM, e.g. signing.pub.pem) a device-model release must "
                        "be signed by before it is served; repeat for several")
    q.add_argument("--address", default="127.0.0.1:50051", help="host:port; port 0 picks a free one")
    q.add_argument("--ready-file", help="write the bound port here once serving")
    q.add_argument("--http-address", help="operator HTTP (health, metrics, registry, dashboard), host:port")
    q.add_argument("--http-ready-file", help="write the bound HTTP port here once serving")
    q.add_argument("--ttl", type=positive_float, default=86400.0, help="list time-to-live, seconds")
    q.add_argument("--workers", type=non_negative_int, default=0,
                   help="handler threads (0 = 16, or twice --batch-max-size when batching)")
    q.add_argument("--telemetry-log", metavar="PATH",
                   help="append the telemetry devices upload (ReportTelemetry) to this JSON-lines "
                        "file; without it the records only feed the metrics")
    q.add_argument("--max-inflight", type=non_negative_int, default=0,
                   help="calls handled at once; more are refused RESOURCE_EXHAUSTED (0 = workers)")
    q.add_argument("--batch-max-size", type=positive_int, default=1,
                   help="dynamic batching: GetCandidates calls answered by one generator call "
                        "(1 = no batching)")
    q.add_argument("--batch-max-wait-ms", type=non_negative_float, default=5.0,
                   help="the longest a queued call waits for a batch to fill, ms")
    q.add_argument("--batch-queue", type=non_negative_int, default=0,
                   help="calls waiting for a batch before more are refused RESOURCE_EXHAUSTED "
                        "(0 = 4 x --batch-max-size)")
    q.add_argument("--batch-fixed-wait", action="store_true",
                   help="always wait --batch-max-wait-ms for a batch to fill; by default the wait "
                        "ends once no other call is on its way (no added latency at low load)")
    q.add_argument("--batch-threads", type=positive_int, default=1,
                   help="batches computed at once (each by its own thread)")
    q.add_argument("--processes", type=positive_int, default=1,
                   help="server processes sharing the port (SO_REUSEPORT); replica i serves "
                        "operator HTTP on the HTTP port + i")
    q.add_argument("--max-request-bytes", type=positive_int, default=1024 * 1024)
    q.add_argument("--grace", type=non_negative_float, default=5.0, help="shutdown grace period, seconds")
    q.add_argument("--tls-cert", help="server certificate chain (PEM)")
    q.add_argument("--tls-key", help="server private key (PEM)")
    q.add_argument("--tls-client-ca", help="CA (PEM) client certificates must chain to: mutual TLS "
                                            "on the gRPC and the HTTP port")
    q.add_argument("--auth-secret", help="HMAC secret file; device calls then need a token")
    q.add_argument("--insecure", action="store_true",
                   help="development only: plaintext, tokens optional")
    q.add_argument("--reflection", action="store_true",
                   help="register gRPC server reflection (grpcurl list/describe); needs no token")
    q.set_defaults(fn=cmd_cloud_serve)


def _load_parsers(cloud: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud bench-serving | bench-hostile``: the load tools."""
    q = cloud.add_parser("bench-serving",
                         help="server throughput and latency with and without dynamic batching")
    q.add_argument("--model-dir", required=True)
    q.add_argument("--clients", type=positive_int, default=64,
                   help="the largest client count; measures 1, 8 and this")
    q.add_argument("--levels", type=positive_int_list, help="explicit client counts, e.g. 1,8,64 (overrides --clients)")
    q.add_argument("--duration", type=positive_float, default=20.0, help="measured seconds per cell")
    q.add_argument("--warmup", type=non_negative_float, default=2.0, help="unmeasured seconds per cell")
    q.add_argument("--rounds", type=positive_int, default=3, help="interleaved repetitions (medians)")
    q.add_argument("--batch-max-size", type=positive_int, default=64)
    q.add_argument("--batch-max-wait-ms", type=non_negative_float, default=5.0)
    q.add_argument("--workers", type=non_negative_int, default=0,
                   help="handler threads of both servers (0 = the largest client count)")
    q.add_argument("--count", type=positive_int, default=100, help="candidates per request")
    q.add_argument("--dataset", help="send real LOO histories of this data set (default: random)")
    q.add_argument("--out", help="folder for server logs and bench-serving.json")
    q.set_defaults(fn=cmd_cloud_bench_serving)
    q = cloud.add_parser("bench-hostile",
                         help="/metrics and serving p99 with and without a flood of hostile telemetry")
    q.add_argument("--model-dir", required=True)
    q.add_argument("--records", type=positive_int, default=200_000, help="hostile records from one device")
    q.add_argument("--clients", type=positive_int, default=64, help="closed-loop serving clients")
    q.add_argument("--duration", type=positive_float, default=15.0, help="measured seconds per cell")
    q.add_argument("--warmup", type=non_negative_float, default=2.0, help="unmeasured seconds per cell")
    q.add_argument("--rounds", type=positive_int, default=3, help="interleaved repetitions (medians)")
    q.add_argument("--workers", type=positive_int, default=64, help="handler threads of both servers")
    q.add_argument("--out", help="folder for server logs and bench-hostile.json")
    q.set_defaults(fn=cmd_cloud_bench_hostile)


def _release_parsers(cloud: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud publish | publish-cloud | neighbours | models``: releases."""
    q = cloud.add_parser("publish", help="publish an ONNX device model to the registry")
    q.add_argument("--registry", required=True)
    q.add_argument("--model", required=True)
    q.add_argument("--config", help="JSON file with the model's settings (max_len, ...)")
    q.add_argument("--neighbours", help="a neighbour index (dcrec cloud neighbours) to release with it")
    q.add_argument("--request-model",
                   help="a request-value model (dcrec cloud request-model) to release with it")
    q.add_argument("--system", metavar="TOML",
                   help="the settings devices run with (default: the built-in system, "
                        "dcrec.shared.system; `dcrec system show` prints it)")
    q.add_argument("--override", action="append", metavar="NAME",
                   help="a named override of the system (never, always, random, no-index, ...)")
    q.add_argument("--version")
    q.add_argument("--signing-key", help="Ed25519 private key (PEM) to sign the release")
    q.add_argument("--no-promote", action="store_true", help="publish without making it live")
    q.set_defaults(fn=cmd_cloud_publish)
    q = cloud.add_parser("publish-cloud", help="publish a trained cloud model to a cloud registry")
    q.add_argument("--registry", required=True)
    q.add_argument("--model-dir", required=True)
    q.add_argument("--version")
    q.add_argument("--no-promote", action="store_true")
    q.set_defaults(fn=cmd_cloud_publish_cloud)
    q = cloud.add_parser("request-model",
                         help="train the request-value model a release carries (learned request policy)")
    data_args(q)
    q.add_argument("--device-model", required=True,
                   help="the device model's folder (model.onnx and model.json from dcrec device train)")
    q.add_argument("--neighbours", help="the neighbour index the release carries (dcrec cloud neighbours)")
    q.add_argument("--backend", default=DEFAULT_BACKEND,
                   help="the cloud's backend, as dcrec cloud train ran it (a fold copy is trained "
                        "without the replayed users' last items)")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=key_value)
    q.add_argument("--users", type=positive_int, default=3000, help="users replayed (out of fold)")
    q.add_argument("--max-lag", type=positive_int, default=8,
                   help="most events between a replayed list and its label (each user: 1 .. this)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--workdir", help="where the fold cloud is kept (default: beside --out)")
    q.add_argument("--out", required=True, help="the request model (JSON) for dcrec cloud publish")
    q.set_defaults(fn=cmd_cloud_request_model)
    q = cloud.add_parser("neighbours",
                         help="build the neighbour index devices use between requests (local lists)")
    q.add_argument("--model-dir", required=True, help="a trained cloud model (any backend)")
    q.add_argument("--out", required=True, help="the .npz file to write")
    q.add_argument("--neighbours", type=positive_int, default=SYSTEM.cloud.neighbours or 50,
                   help="items kept per item (default: the system's, dcrec.shared.system)")
    q.set_defaults(fn=cmd_cloud_neighbours)
    _models_parsers(cloud)


def _credential_parsers(cloud: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud token | keygen``: device and operator tokens, signing keys."""
    q = cloud.add_parser("token", help="issue a device or operator token")
    q.add_argument("--auth-secret", required=True, help="the server's HMAC secret file")
    who = q.add_mutually_exclusive_group(required=True)
    who.add_argument("--device-id", help="issue a device token for this device")
    who.add_argument("--operator", metavar="NAME", help="issue an operator token for NAME")
    q.add_argument("--ttl", type=parse_duration, default="30d",
                   help="lifetime: seconds or 90s, 30m, 12h, 30d")
    q.set_defaults(fn=cmd_cloud_token)
    q = cloud.add_parser("keygen", help="create an auth secret and/or a model-signing key pair")
    q.add_argument("--auth-secret", metavar="FILE")
    q.add_argument("--signing-dir", metavar="DIR")
    q.set_defaults(fn=cmd_cloud_keygen)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cloud = area(sub, "cloud")
    _train_parser(cloud)
    _serve_parser(cloud)
    _load_parsers(cloud)
    _release_parsers(cloud)
    _credential_parsers(cloud)
