"""``dcrec simulate`` and ``dcrec demo``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from dcrec.device.policy import POLICY_CHOICES
from dcrec.shared.cliutil import UsageError, data_args, positive_float, positive_int, unit_interval
from dcrec.shared.system import SYSTEM


def _access(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    """TLS and device tokens for ``--connect`` (None: plaintext, no tokens)."""
    from dcrec.device.client import ClientTls
    from dcrec.simulator.metering import CloudAccess

    tls_flags = {"--tls-ca": ns.tls_ca, "--tls-cert": ns.tls_cert, "--tls-key": ns.tls_key,
                 "--tls-server-name": ns.tls_server_name}
    given = [f for f, v in {**tls_flags, "--tls": ns.tls, "--auth-secret": ns.auth_secret}.items() if v]
    if not given:
        return None
    if not ns.connect:
        raise UsageError(f"{', '.join(given)}: for --connect only (the server the simulator "
                         "starts is plaintext on loopback)")
    if (ns.tls_cert is None) != (ns.tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key (mutual TLS), or neither")
    tls = None
    if ns.tls or any(tls_flags.values()):
        tls = ClientTls(ca_file=ns.tls_ca, cert_file=ns.tls_cert, key_file=ns.tls_key,
                        server_name=ns.tls_server_name)
    return CloudAccess(tls=tls, auth_secret=ns.auth_secret)


def cmd_simulate(ns: argparse.Namespace) -> int:
    if ns.scenario:
        return cmd_scenario(ns)
    from dcrec.simulator.run import SimulationSpec, format_table, run_simulations

    if not ns.cloud_model and not ns.connect:
        raise UsageError("give --cloud-model (to start a server) or --connect host:port")
    spec = SimulationSpec(dataset=ns.dataset, cloud_fraction=ns.cloud_fraction,
                          cloud_model=Path(ns.cloud_model) if ns.cloud_model else None,
                          registry=Path(ns.registry) if ns.registry else None,
                          connect=ns.connect, access=_access(ns), workdir=Path(ns.workdir),
                          policies=ns.policy,
                          threshold=ns.threshold, alpha=ns.alpha, max_users=ns.users,
                          ttl=ns.ttl)
    results = run_simulations(spec, say=lambda line: print(line, file=sys.stderr))
    print(format_table(results))
    return 0


def _paired(results: list, k: int) -> None:  # type: ignore[type-arg]
    """The system's run (else the first) against each other one, paired over the devices both ran."""
    from dcrec.simulator.report import paired_per_device

    if len(results) < 2 or not all(r.per_device for r in results):
        return
    first = next((r for r in results if r.policy == "system"), results[0])
    for other in (r for r in results if r is not first):
        d, lo, hi, n = paired_per_device(first, other)
        print(f"NDCG@{k} per device, {first.policy} - {other.policy}: {d:+.4f} [{lo:+.4f}, {hi:+.4f}] "
              f"(95 % paired bootstrap over {n} devices)")


def cmd_scenario(ns: argparse.Namespace) -> int:
    from dcrec.simulator.report import summary_table
    from dcrec.simulator.runner import Models, run_scenario
    from dcrec.simulator.scenario import load_scenario

    # --users overrides the scenario's user count (workload.devices or workload.max_users).
    sc = load_scenario(ns.scenario, list(ns.set or []), users=ns.users)
    models_dir = Path(ns.models)
    cloud = Path(ns.cloud_model) if ns.cloud_model else models_dir / "cloud"
    registry = Path(ns.registry) if ns.registry else models_dir / "registry"
    models = Models(cloud_model=None if ns.connect else cloud,
                    registry=registry if registry.is_dir() else None, connect=ns.connect,
                    access=_access(ns))
    out = Path(ns.out or Path("runs/simulate") / sc.name)
    # SIGTERM ends the run through the finally blocks, which stop the cloud server we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    outcome = run_scenario(sc, models, out, shards=ns.shards, ray_address=ns.ray_address)
    print(f"scenario {sc.name}: {sc.description}")
    print(summary_table(outcome.results, sc.fleet.k))
    _paired(outcome.results, sc.fleet.k)
    for name, c in outcome.checks.items():
        print(f"check {'pass' if c['ok'] else 'FAIL'}: {name} = {c['value']} (limit {c['limit']})")
    print(f"report: {outcome.report}")
    return 0 if outcome.passed else 1


def cmd_demo(ns: argparse.Namespace) -> int:
    from dcrec.simulator.demo import run_demo

    return run_demo(Path(ns.workdir), ns.dataset, quick=ns.quick)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser("simulate", help="replay a fleet of devices against a real cloud server")
    data_args(q)
    q.add_argument("--cloud-model", help="model directory to serve (starts a server)")
    q.add_argument("--registry", help="device-model registry the started server hands out")
    q.add_argument("--connect", help="use a running server at host:port instead")
    q.add_argument("--tls", action="store_true",
                   help="--connect over TLS, trusting the system's CAs (implied by --tls-ca, "
                        "--tls-cert, --tls-server-name)")
    q.add_argument("--tls-ca", metavar="PEM", help="--connect over TLS: the CA the server's "
                                                   "certificate chains to")
    q.add_argument("--tls-cert", metavar="PEM",
                   help="client certificate for mutual TLS (with --tls-key); all devices share it")
    q.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")
    q.add_argument("--tls-server-name", metavar="NAME",
                   help="the name the server certificate must carry, if not the --connect host")
    q.add_argument("--auth-secret", metavar="FILE",
                   help="the server's HMAC secret: each simulated device gets its own device token "
                        "(a token names one device, so one token cannot serve a fleet)")
    q.add_argument("--workdir", default="runs/simulate")
    q.add_argument("--policy", action="append", choices=POLICY_CHOICES,
                   help="request policy; repeat to compare (default: system, the system's own "
                        "policy at its budget; dcrec system show)")
    q.add_argument("--threshold", type=unit_interval, default=SYSTEM.policy.threshold,
                   help="the disagreement policy's fixed threshold (and budgeted's prior)")
    q.add_argument("--alpha", type=unit_interval, help="cloud weight in fusion (default: the system's)")
    q.add_argument("--users", type=positive_int,
                   help="replay only this many users; with --scenario: the scenario's user count "
                        "(workload.devices of a closed loop, workload.max_users of a trace)")
    q.add_argument("--ttl", type=positive_float, default=86400.0, help="list time-to-live, seconds")
    q.add_argument("--scenario", help="scenario NAME (steady, cloud-outage, flash-crowd, "
                   "lossy-network) or PATH to a .toml file; writes a report")
    q.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a scenario value, e.g. workload.devices=200")
    q.add_argument("--models", default="runs/demo",
                   help="folder with cloud/ and registry/ as `dcrec demo` leaves them (with --scenario)")
    q.add_argument("--out", help="report folder (default runs/simulate/NAME)")
    q.add_argument("--shards", type=positive_int, default=1, help="run each fleet as this many Ray shards")
    q.add_argument("--ray-address", help="Ray cluster address (default: start a local one)")
    q.set_defaults(fn=cmd_simulate)

    q = sub.add_parser("demo", help="train both models, serve, simulate, report")
    q.add_argument("--dataset", default="ml-100k")
    q.add_argument("--workdir", default="runs/demo")
    q.add_argument("--quick", action="store_true", help="fewer epochs and users (smoke run)")
    q.set_defaults(fn=cmd_demo)
