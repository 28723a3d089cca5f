"""``dcrec demo``: the system, trained, released, served and replayed by every user; one table.

Runs the real path end to end on the system's settings (dcrec.shared.system): the default
cloud recommender and the device model are trained side by side (two processes, one core
each) on the cloud's side of a per-user time split, with the request-value model's fold
cloud after the cloud model; the device model is exported to ONNX; the cloud's neighbour
index is built from the cloud's own lists; the request-value model is trained by replaying
devices; all of it is published as one signed release with the system's settings; a real
gRPC server is started on loopback and every user is a device that downloads that release
and replays its later events. Three policies run against the same server, all with the
release's index: ``never`` (no request after the first list), ``system`` (the system's own
policy at its request budget) and ``always`` (a fresh list on every event).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dcrec.shared.cli import main as cli
from dcrec.shared.system import SYSTEM, SYSTEM_POLICY


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _step(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def explain(results: list, ratio: float) -> str:  # type: ignore[type-arg]
    """A few plain sentences on the table: what the system buys against never and always."""
    by = {r.policy: r.summary() for r in results}
    if not {"never", SYSTEM_POLICY, "always"} <= set(by):
        return ""
    n, s, a = (by[p]["NDCG@10"] for p in ("never", SYSTEM_POLICY, "always"))
    gap = a - n
    share = (s - n) / gap if gap > 0 else float("nan")
    lines = [f"The system asked the cloud on {by[SYSTEM_POLICY]['request_ratio']:.1%} of events "
             f"(its budget: {ratio:.0%}) and reached NDCG@10 {s:.4f}, against {n:.4f} with no "
             f"request after the first list and {a:.4f} with a request on every event."]
    if gap > 0:
        lines.append(f"It recovers {share:.0%} of the gap between the two with "
                     f"{by[SYSTEM_POLICY]['request_ratio'] / max(by['always']['request_ratio'], 1e-9):.1%} "
                     "of always's requests.")
    else:
        lines.append("Here a fresh list is worth nothing over the device's own lists: the "
                     "neighbour index already holds what the cloud would send.")
    fleets = {r.policy: r.fleet for r in results if r.fleet is not None and r.fleet.per_device}
    if {"never", SYSTEM_POLICY, "always"} <= set(fleets):
        from dcrec.simulator.report import paired_per_device

        for other in ("never", "always"):
            d, lo, hi, n = paired_per_device(fleets[SYSTEM_POLICY], fleets[other])
            lines.append(f"\nPer device, the system minus {other}: NDCG@10 {d:+.4f} "
                         f"[{lo:+.4f}, {hi:+.4f}] (95 % paired bootstrap over {n} devices).")
    return " ".join(lines)


def run_demo(workdir: Path, dataset: str = "ml-100k", quick: bool = False) -> int:
    start = time.perf_counter()
    workdir = Path(workdir)
    shutil.rmtree(workdir / "registry", ignore_errors=True)
    data = ["--dataset", dataset]
    system = SYSTEM
    t = _step(f"1/5 train the cloud recommender ({system.cloud.backend}) and, beside it, the "
              "device reranker (SASRec)")
    epochs = "3" if quick else "30"
    device_log = (workdir / "device-train.log")
    workdir.mkdir(parents=True, exist_ok=True)
    with device_log.open("w") as log_file:
        device = subprocess.Popen(
            [sys.executable, "-c", "import sys; from dcrec.shared.cli import main; sys.exit(main())",
             "device", "train", *data, "--out", str(workdir / "device"), "--epochs", epochs,
             "--time-budget", "60" if quick else "420", "--threads", "1"],
            stdout=log_file, stderr=subprocess.STDOUT)
        try:
            if cli(["cloud", "train", *data, "--out", str(workdir / "cloud")]):
                return 1
            print(f"   cloud model in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            if system.cloud.request_model:
                from dcrec.cloud.models.backends import DEFAULT_BACKEND
                from dcrec.cloud.training.request_value import fold_cloud
                from dcrec.shared.cliutil import load_split

                ds, split = load_split(dataset, 0.8)
                fold_cloud(ds, split.cloud_sequences(), workdir / "request-work", DEFAULT_BACKEND, {},
                           say=_say)
                print(f"   the request model's fold cloud in {time.perf_counter() - t:.1f}s",
                      file=sys.stderr)
            code = device.wait()
        finally:
            if device.poll() is None:
                device.kill()
                device.wait()
    print(device_log.read_text().strip().splitlines()[-1] if device_log.stat().st_size else "",
          file=sys.stderr)
    if code:
        _say(f"device training failed (exit {code}); its output: {device_log}")
        return 1
    _step("2/5 export the device model to ONNX; build the cloud's neighbour index")
    if cli(["device", "export", "--model-dir", str(workdir / "device")]):
        return 1
    release = ["--model", str(workdir / "device" / "model.onnx"),
               "--config", str(workdir / "device" / "model.json")]
    if system.cloud.neighbours:
        if cli(["cloud", "neighbours", "--model-dir", str(workdir / "cloud"),
                "--neighbours", str(system.cloud.neighbours), "--out", str(workdir / "neighbours.npz")]):
            return 1
        release += ["--neighbours", str(workdir / "neighbours.npz")]
    if system.cloud.request_model:
        _step("3/5 train the request-value model (replayed devices, out-of-fold lists)")
        if cli(["cloud", "request-model", *data, "--device-model", str(workdir / "device"),
                *(["--neighbours", str(workdir / "neighbours.npz")] if system.cloud.neighbours else []),
                "--workdir", str(workdir / "request-work"), "--out", str(workdir / "request-model.json")]):
            return 1
        release += ["--request-model", str(workdir / "request-model.json")]
    _step("4/5 publish one release: the model, the index, the request model and the system's settings")
    if cli(["cloud", "publish", "--registry", str(workdir / "registry"), *release, "--version", "system"]):
        return 1
    _step("5/5 serve and simulate the fleet (never / the system / always)")
    from dcrec.simulator.run import SimulationSpec, format_table, run_simulations

    shutil.rmtree(workdir / "sim", ignore_errors=True)  # devices fetch this release
    spec = SimulationSpec(dataset=dataset, cloud_model=workdir / "cloud",
                          registry=workdir / "registry", workdir=workdir / "sim",
                          policies=["never", SYSTEM_POLICY, "always"],
                          max_users=50 if quick else None)
    results = run_simulations(spec, say=_say)
    table = format_table(results)
    note = explain(results, system.policy.target_ratio)
    (workdir / "summary.md").write_text(table + "\n\n" + note + "\n")
    (workdir / "summary.json").write_text(json.dumps(
        [{"policy": r.policy, **r.summary(), "reasons": dict(r.reasons)} for r in results], indent=2))
    print(f"\nthe system ({system.cloud.backend} cloud, neighbour index "
          f"{system.cloud.neighbours or 'off'}, {system.policy.name} requests at "
          f"{system.policy.target_ratio:.0%}; dcrec system show): never = no request after the "
          "first list; system = the system's policy at its budget; always = a request on every event\n")
    print(table)
    print("\n" + note)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s; results in {workdir}/summary.md")
    return 0
