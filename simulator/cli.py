"""``dcrec simulate`` and ``dcrec demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cliutil import data_args


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



def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
