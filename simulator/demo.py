"""``dcrec demo``: train both models, serve, simulate every user, print the summary.

Runs the real path end to end: the cloud model and the device model are
trained on the cloud's side of a per-user time split, the device model is
exported to ONNX and published to the registry, a real gRPC server is started
on loopback, every device downloads the model from it and replays its user's
later events. Three policies run against the same server: no requests after
the first list (lower bound), disagreement-triggered requests (the system),
and a request on every event (upper bound). Then the model is released again
with the cloud's neighbour index, and ``never`` and ``disagreement`` run once
more, the devices' local lists ranked between requests.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from dcrec.shared.cli import main as cli


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _step(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def run_demo(workdir: Path, dataset: str = "ml-100k", quick: bool = False) -> int:
    start = time.perf_counter()
    workdir = Path(workdir)
    shutil.rmtree(workdir / "registry", ignore_errors=True)
    data = ["--dataset", dataset]
    t = _step("1/5 train the cloud recommender")
    if cli(["cloud", "train", *data, "--out", str(workdir / "cloud")]):
        return 1
    print(f"   {time.perf_counter() - t:.1f}s", file=sys.stderr)
    _step("2/5 train the device reranker (SASRec)")
    epochs = "3" if quick else "30"
    if cli(["device", "train", *data, "--out", str(workdir / "device"), "--epochs", epochs,
            "--time-budget", "60" if quick else "420"]):
        return 1
    _step("3/5 export to ONNX and publish to the registry")
    if cli(["device", "export", "--model-dir", str(workdir / "device"),
            "--registry", str(workdir / "registry")]):
        return 1
    _step("4/5 serve and simulate the fleet (never / disagreement / always)")
    from dataclasses import replace

    from dcrec.simulator.run import SimulationSpec, format_table, run_simulations

    spec = SimulationSpec(dataset=dataset, cloud_model=workdir / "cloud",
                          registry=workdir / "registry", workdir=workdir / "sim",
                          policies=["never", "disagreement", "always"],
                          max_users=50 if quick else None)
    results = run_simulations(spec, say=_say)
    _step("5/5 release the model again with the cloud's neighbour index; simulate never / disagreement")
    if cli(["cloud", "neighbours", "--model-dir", str(workdir / "cloud"),
            "--out", str(workdir / "neighbours.npz")]):
        return 1
    if cli(["cloud", "publish", "--registry", str(workdir / "registry"),
            "--model", str(workdir / "device" / "model.onnx"),
            "--config", str(workdir / "device" / "model.json"),
            "--neighbours", str(workdir / "neighbours.npz"), "--version", "with-neighbours"]):
        return 1
    shutil.rmtree(workdir / "sim-neighbours", ignore_errors=True)  # devices fetch the new release
    again = run_simulations(replace(spec, workdir=workdir / "sim-neighbours",
                                    policies=["never", "disagreement"]), say=_say)
    results += [replace(r, policy=f"{r.policy} + neighbour index") for r in again]
    table = format_table(results)
    (workdir / "summary.md").write_text(table + "\n")
    (workdir / "summary.json").write_text(json.dumps(
        [{"policy": r.policy, **r.summary(), "reasons": dict(r.reasons)} for r in results], indent=2))
    print("\nlower bound = never (no request after the first list); "
          "upper bound = always (a request on every event); + neighbour index: the same "
          "device model released with the cloud's neighbour index (local lists between requests)\n")
    print(table)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s; results in {workdir}/summary.md")
    return 0
