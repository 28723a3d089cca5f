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


def _tls_paths(ns: argparse.Namespace) -> tuple[str | None, str | None]:
    if (ns.tls_cert is None) != (ns.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key")
    return ns.tls_cert, ns.tls_key


def _write_ready(path: str | None, port: int) -> None:
    if path:  # written atomically so a waiting parent never reads half a number
        tmp = Path(path + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(path)


def cmd_cloud_serve(ns: argparse.Namespace) -> int:
    from cloud.backends import load_generator
    from cloud.registry import CloudModelRegistry, ModelRegistry
    from cloud.server import ServerConfig, TlsConfig, serve
    from cloud.service import CandidateService, ServiceConfig

    cert, key = _tls_paths(ns)
    if not ns.insecure and (cert is None or ns.auth_secret is None):
        raise ValueError("a production server needs --tls-cert/--tls-key and --auth-secret; "
                         "pass --insecure for a plaintext development server")
    if ns.tls_client_ca and cert is None:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    cloud_registry = CloudModelRegistry(ns.cloud_registry) if ns.cloud_registry else None
    if cloud_registry is not None and not ns.model_dir:
        live = cloud_registry.current_version()
        if live is None:
            raise ValueError(f"cloud registry {ns.cloud_registry} has no live model")
        model_dir = cloud_registry.path(live)
    elif ns.model_dir:
        model_dir = Path(ns.model_dir)
    else:
        raise ValueError("give --model-dir or --cloud-registry")
    generator = load_generator(model_dir)
    service = CandidateService(generator, ServiceConfig(ttl_seconds=ns.ttl))
    signer = None
    if ns.signing_key:
        from cloud.signing import Signer

        signer = Signer.from_file(ns.signing_key)
    registry = ModelRegistry(ns.registry, signer) if ns.registry else None
    authority = None
    if ns.auth_secret:
        from cloud.auth import TokenAuthority

        authority = TokenAuthority.from_file(ns.auth_secret)
    tls = TlsConfig(cert, key, ns.tls_client_ca) if cert and key else None
    config = ServerConfig(max_workers=ns.workers, grace_s=ns.grace, tls=tls, insecure=ns.insecure,
                          auth_required=not ns.insecure, max_inflight=ns.max_inflight,
                          max_request_bytes=ns.max_request_bytes)
    http = None
    if ns.http_address:
        from cloud.http.runner import HttpConfig

        http = HttpConfig(ns.http_address, cert, key)

    def announce(port: int) -> None:
        print(f"serving on port {port}", file=sys.stderr, flush=True)
        _write_ready(ns.ready_file, port)

    def announce_http(port: int) -> None:
        print(f"operator HTTP on port {port}", file=sys.stderr, flush=True)
        _write_ready(ns.http_ready_file, port)

    serve(ns.address, service, registry, config, announce, authority=authority, http=http,
          cloud_registry=cloud_registry, on_http_ready=announce_http)
    return 0


def cmd_cloud_publish(ns: argparse.Namespace) -> int:
    from cloud.registry import ModelRegistry

    config = json.loads(Path(ns.config).read_text()) if ns.config else {}
    registry = ModelRegistry(ns.registry, _signer(ns))
    version = registry.publish(ns.model, config, ns.version, make_current=not ns.no_promote)
    live = " (live)" if not ns.no_promote else ""
    print(f"published device model {version}{live} to {ns.registry}")
    return 0


def cmd_cloud_publish_cloud(ns: argparse.Namespace) -> int:
    from cloud.registry import CloudModelRegistry

    version = CloudModelRegistry(ns.registry).publish(ns.model_dir, ns.version,
                                                      make_current=not ns.no_promote)
    print(f"published cloud model {version} to {ns.registry}")
    return 0


def _signer(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    if not getattr(ns, "signing_key", None):
        return None
    from cloud.signing import Signer

    return Signer.from_file(ns.signing_key)


def cmd_cloud_models(ns: argparse.Namespace) -> int:
    from cloud.registry import CloudModelRegistry, ModelRegistry

    reg = (ModelRegistry(ns.registry, _signer(ns)) if ns.kind == "device"
           else CloudModelRegistry(ns.registry))
    if ns.action == "list":
        for v in reg.describe():
            print(f"{'*' if v['current'] else ' '} {v['version']}  {v['bytes']} bytes")
        print(f"live release: {reg.current_sequence()}")
    elif ns.action == "promote":
        if not ns.version:
            raise ValueError("promote needs --version")
        print(f"{ns.kind} model {ns.version} live as release {reg.promote(ns.version)}")
    else:
        version, seq = reg.rollback()
        print(f"{ns.kind} model rolled back to {version} as release {seq}")
    if ns.action != "list" and ns.kind == "cloud":
        print("a running server applies cloud releases made here at its next start; "
              "use POST /api/models/cloud/... to switch a live server", file=sys.stderr)
    return 0


def parse_duration(text: str) -> float:
    """Seconds in ``3600``, ``90s``, ``30m``, ``12h`` or ``30d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:], None)
    value = float(t[:-1] if mult else t) * (mult or 1)
    if not value > 0:
        raise ValueError(f"duration {text!r} must be > 0")
    return value


def cmd_cloud_token(ns: argparse.Namespace) -> int:
    from cloud.auth import TokenAuthority

    authority = TokenAuthority.from_file(ns.auth_secret)
    if bool(ns.device_id) == bool(ns.operator):
        raise ValueError("give exactly one of --device-id or --operator")
    role = "device" if ns.device_id else "operator"
    print(authority.issue(ns.device_id or ns.operator, parse_duration(ns.ttl), role))
    return 0


def cmd_cloud_keygen(ns: argparse.Namespace) -> int:
    for existing in (ns.auth_secret, ns.signing_dir and Path(ns.signing_dir) / "signing.pem"):
        if existing and Path(existing).exists():
            raise ValueError(f"{existing} exists; refusing to overwrite a key")
    if ns.auth_secret:
        from cloud.auth import write_secret

        print(f"auth secret written to {write_secret(ns.auth_secret)}")
    if ns.signing_dir:
        from cloud.signing import write_keypair

        private, public = write_keypair(ns.signing_dir)
        print(f"signing key {private} (keep secret); devices trust {public}")
    if not ns.auth_secret and not ns.signing_dir:
        raise ValueError("give --auth-secret FILE and/or --signing-dir DIR")
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
    q.add_argument("--model-dir", help="the cloud model (or use --cloud-registry)")
    q.add_argument("--cloud-registry", help="cloud-model registry folder; serves its live version")
    q.add_argument("--registry", help="device-model registry folder")
    q.add_argument("--signing-key", help="Ed25519 private key (PEM) that signs device-model releases")
    q.add_argument("--address", default="127.0.0.1:50051", help="host:port; port 0 picks a free one")
    q.add_argument("--ready-file", help="write the bound port here once serving")
    q.add_argument("--http-address", help="operator HTTP (health, metrics, registry, dashboard), host:port")
    q.add_argument("--http-ready-file", help="write the bound HTTP port here once serving")
    q.add_argument("--ttl", type=float, default=86400.0, help="list time-to-live, seconds")
    q.add_argument("--workers", type=int, default=16)
    q.add_argument("--max-inflight", type=int, default=0,
                   help="calls handled at once; more are refused RESOURCE_EXHAUSTED (0 = workers)")
    q.add_argument("--max-request-bytes", type=int, default=1024 * 1024)
    q.add_argument("--grace", type=float, default=5.0, help="shutdown grace period, seconds")
    q.add_argument("--tls-cert", help="server certificate chain (PEM)")
    q.add_argument("--tls-key", help="server private key (PEM)")
    q.add_argument("--tls-client-ca", help="CA (PEM) client certificates must chain to: mutual TLS")
    q.add_argument("--auth-secret", help="HMAC secret file; device calls then need a token")
    q.add_argument("--insecure", action="store_true",
                   help="development only: plaintext, tokens optional")
    q.set_defaults(fn=cmd_cloud_serve)
    q = cloud.add_parser("publish", help="publish an ONNX device model to the registry")
    q.add_argument("--registry", required=True)
    q.add_argument("--model", required=True)
    q.add_argument("--config", help="JSON file with the model's settings (max_len, ...)")
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
    q = cloud.add_parser("models", help="list, promote or roll back registry models on disk")
    q.add_argument("action", choices=["list", "promote", "rollback"])
    q.add_argument("--kind", choices=["device", "cloud"], default="device")
    q.add_argument("--registry", required=True)
    q.add_argument("--version", help="for promote")
    q.add_argument("--signing-key", help="device releases: Ed25519 private key (PEM)")
    q.set_defaults(fn=cmd_cloud_models)
    q = cloud.add_parser("token", help="issue a device or operator token")
    q.add_argument("--auth-secret", required=True, help="the server's HMAC secret file")
    q.add_argument("--device-id")
    q.add_argument("--operator", metavar="NAME", help="issue an operator token for NAME")
    q.add_argument("--ttl", default="30d", help="lifetime: seconds or 90s, 30m, 12h, 30d")
    q.set_defaults(fn=cmd_cloud_token)
    q = cloud.add_parser("keygen", help="create an auth secret and/or a model-signing key pair")
    q.add_argument("--auth-secret", metavar="FILE")
    q.add_argument("--signing-dir", metavar="DIR")
    q.set_defaults(fn=cmd_cloud_keygen)
