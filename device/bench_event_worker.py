"""One side of ``dcrec device bench-event``: replays events through a real DeviceRuntime and times them.

Run as a script by :mod:`dcrec.device.bench_event`, once for this checkout and once for
each ``--baseline`` checkout, so the two run side by side in one sitting. It therefore
uses only the runtime's public API (``DeviceRuntime``, ``RuntimeConfig``, ``DeviceStore``,
``CachedList``, ``OnnxReranker``, ``NeighbourIndex``, ``make_policy``) and finds it under
``dcrec.device`` or, in checkouts from before the ``dcrec`` namespace, ``device``.

Stages are timed by wrapping what the runtime calls (store append, ONNX calls, the
neighbour index, fusion and measure functions, the policy, state saves) with
``perf_counter`` probes: nothing in the runtime changes, and an older checkout gets the
same breakdown. A stage a checkout does not have is simply absent from its table.

Protocol: the worker prints ``ready`` once every device is set up, then answers each
``run N`` line on stdin with one JSON line: per event, the total and each stage's
milliseconds, the list shown and whether the policy asked the cloud, for the next
``N`` events (devices in turn). With ``--connect`` every device has a real client.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

# stage name -> (owner, attribute); owner: store, reranker, index, policy, runtime (the
# instance), or module (a function the runtime module calls by name).
PROBES: dict[str, list[tuple[str, str]]] = {
    "store append": [("store", "append")],
    "model: catalogue pass": [("reranker", "score_catalogue")],
    "model: candidates": [("reranker", "score"), ("reranker", "score_with_embeddings")],
    "local list": [("index", "local_list")],
    "blend": [("module", "blend_lists")],
    "measure": [("module", "expected_regret"), ("module", "regret_of_scores"), ("module", "softmax"), ("module", "uncovered_mass"),
                ("module", "coverage_gap"), ("module", "disagreement")],
    "policy": [("policy", "decide")],
    "state save": [("runtime", "_save_state")],
}


def _import(name: str, flat_first: bool) -> ModuleType:
    """``dcrec.<name>`` or, in a checkout from before the namespace, ``<name>``."""
    names = [name, f"dcrec.{name}"] if flat_first else [f"dcrec.{name}", name]
    try:
        return importlib.import_module(names[0])
    except ModuleNotFoundError:
        return importlib.import_module(names[1])


def _only_from(root: str) -> None:
    """Import the project from ``root`` alone: drop the installed checkout's editable finders."""
    def editable(f: object) -> bool:
        return "editable" in (getattr(f, "__module__", "") or "").lower()

    sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
    sys.path[:] = [root] + [p for p in sys.path if "__editable__" not in p]


class Probes:
    """Accumulates milliseconds per stage for the event being timed."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.depth = 0  # a probed call inside another probed call counts for the outer only

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.now[stage] = self.now.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
        return timed

    def install(self, owners: dict[str, Any]) -> None:
        for stage, targets in PROBES.items():
            for owner_name, attr in targets:
                owner = owners.get(owner_name)
                if owner is None or not hasattr(owner, attr):
                    continue
                object.__setattr__(owner, attr, self.wrap(stage, getattr(owner, attr)))  # frozen too


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", help="a checkout to import the runtime from (default: the installed one)")
    p.add_argument("--model", required=True, help="model.onnx")
    p.add_argument("--model-config", required=True, help="the release's model config (JSON)")
    p.add_argument("--neighbours", help="the release's neighbour index (.npz)")
    p.add_argument("--events", required=True, help="the event file bench_event wrote (.npz)")
    p.add_argument("--config", default="{}", help="RuntimeConfig fields (JSON)")
    p.add_argument("--policy", default="learned")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stages", action="store_true", help="time the stages too")
    p.add_argument("--scores", action="store_true",
                   help="also report the device's score of every item it ranked, per event")
    p.add_argument("--connect", help="a cloud server's address: requests go to it (default: no client)")
    ns = p.parse_args(argv)
    if ns.root:
        _only_from(ns.root)
    flat = bool(ns.root)
    runtime_mod = _import("device.runtime", flat)
    reranker_mod = _import("device.reranker", flat)
    store_mod = _import("device.store", flat)
    policy_mod = _import("device.policy", flat)
    neighbours_mod = _import("shared.neighbours", flat)
    client_mod = _import("device.client", flat)
    print(f"runtime from {runtime_mod.__file__}", file=sys.stderr)

    model_config = json.loads(Path(ns.model_config).read_text())
    reranker = reranker_mod.OnnxReranker.from_file(ns.model, int(model_config["max_len"]),
                                                   threads=ns.threads,
                                                   n_items=model_config.get("n_items"))
    index = neighbours_mod.NeighbourIndex.load(ns.neighbours) if ns.neighbours else None
    if "request_model" in model_config:  # the learned policy's model, in checkouts that have one
        try:
            value_mod = _import("shared.request_value", flat)
        except ImportError:
            value_mod = None
        if value_mod is not None:
            reranker.request_model = value_mod.RequestValueModel.from_dict(model_config["request_model"])
    config = runtime_mod.RuntimeConfig(**json.loads(ns.config))
    data = np.load(ns.events)
    n_devices = int(data["n_devices"])
    work = Path(tempfile.mkdtemp(prefix="dcrec-bench-event-"))
    probes = Probes()
    runtimes, streams = [], []
    clock = [1_000_000.0]
    for d in range(n_devices):
        store = store_mod.DeviceStore(work / f"d{d}.sqlite")
        for item in data[f"pre{d}"].tolist():
            clock[0] += 1.0
            store.append(int(item), clock[0])
        store.save_list(store_mod.CachedList(data[f"list_items{d}"], data[f"list_scores{d}"],
                                             f"L{d}", "bench", clock[0], 1e9))
        policy = policy_mod.make_policy(ns.policy, seed=d)
        client = client_mod.CloudClient(ns.connect, deadline_s=2.0) if ns.connect else None
        rt = runtime_mod.DeviceRuntime(f"d{d}", store, reranker, client, policy, config,
                                       lambda: clock[0], index)
        if ns.stages:
            probes.install({"store": store, "policy": policy, "runtime": rt})
        runtimes.append(rt)
        streams.append(data[f"timed{d}"].tolist())
    if ns.stages:
        probes.install({"reranker": reranker, "index": index, "module": runtime_mod})
    cursor = [0] * n_devices
    turn = 0
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        totals: list[float] = []
        stages: list[dict[str, float]] = []
        shown: list[list[int]] = []
        asked: list[bool] = []
        device_scores: list[list[float] | None] = []
        for _ in range(n):
            d = turn % n_devices
            turn += 1
            stream = streams[d]
            item = stream[cursor[d] % len(stream)]
            cursor[d] += 1
            clock[0] += 1.0
            probes.now = {}
            t = time.perf_counter()
            rec = runtimes[d].record(item, clock[0])
            totals.append((time.perf_counter() - t) * 1e3)
            stages.append(probes.now)
            shown.append(rec.items.tolist())
            asked.append(rec.request is not None)
            if ns.scores:  # what the runtime ranked by (private, but in every checkout)
                last = getattr(runtimes[d], "_last", None)
                device_scores.append(None if last is None else
                                     [float(x) for x in last.device])
        print(json.dumps({"total": totals, "stages": stages, "shown": shown, "asked": asked,
                          "scores": device_scores}), flush=True)
    for rt in runtimes:
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
