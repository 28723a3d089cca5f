"""``dcrec device bench-event``: the device runtime's own command (the models' commands are the
cloud's: :mod:`dcrec.cloud.training.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dcrec.shared.cliutil import (
    UsageError,
    area,
    key_value,
    non_negative_int,
    options,
    positive_int,
)
from dcrec.shared.system import SYSTEM


def cmd_bench_event(ns: argparse.Namespace) -> int:
    from dcrec.device.bench_event import Release, bench_event, format_report
    from dcrec.device.runtime import RuntimeConfig
    from dcrec.shared.data import load_dataset

    if (ns.registry is None) == (ns.release is None):
        raise UsageError("give one of --registry (its live release) or --release (a version folder)")
    release = Release.from_registry(ns.registry) if ns.registry else Release.from_dir(ns.release)
    config = options(ns.set, "--set")
    try:
        RuntimeConfig(**config).validate()
    except (TypeError, ValueError) as e:  # an unknown field, or a bad value
        raise UsageError(f"--set: {e}") from None
    for b in ns.baseline:
        if not (Path(b) / "device" / "runtime.py").is_file():
            raise UsageError(f"--baseline {b}: not a checkout of this project (no device/runtime.py)")
    ds = load_dataset(ns.dataset)
    sequences = [ds.sequence(u) for u in range(ds.n_users)]
    res = bench_event(release, sequences, events=ns.events, warmup=ns.warmup, block=ns.block,
                      devices=ns.devices, baselines=[Path(b) for b in ns.baseline], config=config,
                      policy=ns.policy, threads=ns.threads, stages=not ns.no_stages, seed=ns.seed,
                      cloud_model=Path(ns.cloud_model) if ns.cloud_model else None,
                      compare_scores=ns.compare_scores)
    cloud = f"a real cloud server on loopback ({ns.cloud_model})" if ns.cloud_model else "no cloud client"
    print(f"{ds.name}: {release.model} ({ns.threads} thread(s), policy {ns.policy}, {cloud})")
    print(format_report(res))
    if ns.json:
        Path(ns.json).write_text(json.dumps({
            "config": res.config, "devices": res.devices, "identical": res.identical,
            "score_diff": res.score_diff,
            "subjects": [{"label": s.label, **s.summary(),
                          "breakdown": s.breakdown() if s.stages else None}
                         for s in res.subjects]}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    device = area(sub, "device")
    q = device.add_parser("bench-event", help="the whole DeviceRuntime.record() per event, by stage; "
                                              "older checkouts side by side")
    q.add_argument("--dataset", default="ml-100k", help="whose users' events to replay")
    q.add_argument("--registry", help="a device-model registry: its live release")
    q.add_argument("--release", help="a release folder (registry models/<version>)")
    q.add_argument("--events", type=positive_int, default=3000, help="timed events per subject")
    q.add_argument("--warmup", type=non_negative_int, default=300)
    q.add_argument("--block", type=positive_int, default=100, help="events per turn")
    q.add_argument("--devices", type=positive_int, default=32)
    q.add_argument("--baseline", action="append", default=[], metavar="CHECKOUT",
                   help="an older checkout of the project, timed side by side (repeatable)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                   help="RuntimeConfig fields, e.g. measure=regret device_candidates=3")
    q.add_argument("--policy", default=SYSTEM.policy.name,
                   help="request policy (default: the system's); the runtime settings default to "
                        "the system's too (--set KEY=VALUE changes one)")
    q.add_argument("--cloud-model", help="a cloud model directory: serve it on loopback and let the "
                                         "policy's requests reach it (default: no cloud client)")
    q.add_argument("--threads", type=positive_int, default=1)
    q.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    q.add_argument("--compare-scores", action="store_true",
                   help="also compare the device's scores with each baseline's, event by event")
    q.add_argument("--seed", type=non_negative_int, default=0)
    q.add_argument("--json", help="also write the figures here")
    q.set_defaults(fn=cmd_bench_event)
