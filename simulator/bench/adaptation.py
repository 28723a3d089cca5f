"""``dcrec bench adaptation``: does on-device adaptation earn its place in the system?

The system runs with and without the runtime's adaptation, the per-user vector
(``device.adapt``), on two workloads where taste moves:

- ``steady``: the MovieLens replay (every user's later 20 % of ratings, real times). Its
  drifting slice is the quarter of users whose genre mix on the device (the later events)
  is furthest, in total variation, from their genre mix in the cloud's data (the earlier
  events); the rest are the other three quarters.
- ``engagement``: closed-loop simulated users whose latent interests drift as they browse
  (``simulator/users.py``): all of them drift.

Every variant runs the same users against the same release, so each difference from the
system is paired over devices: the mean per-device NDCG@10 difference with a 95 % bootstrap
interval (:func:`dcrec.simulator.report.paired_per_device`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcrec.shared.data import Dataset
from dcrec.shared.splits import TimeSplit

VARIANTS: dict[str, list[str]] = {  # (the system has the user vector on)
    "system": [],
    "- user vector": ["runtime.adapt=false"],
}
SLICE = 0.25  # the drifting slice: this share of users, most shifted first


def genres(ds: Dataset) -> list[frozenset[str]]:
    """Each item's genres: the last ``|`` field of its text (MovieLens: "Action Comedy")."""
    return [frozenset(t.rsplit("|", 1)[-1].split()) if "|" in t else frozenset()
            for t in ds.catalogue.texts]


def genre_shift(ds: Dataset, split: TimeSplit) -> np.ndarray:
    """(n_users,) total variation distance between each user's genre mix in the cloud's events
    and in the device's stream; NaN for a user without genres on either side."""
    g = genres(ds)
    names = sorted(set().union(*g))
    col = {n: i for i, n in enumerate(names)}

    def mix(items: np.ndarray) -> np.ndarray | None:
        v = np.zeros(len(names))
        for i in items:
            for n in g[int(i)]:
                v[col[n]] += 1.0 / len(g[int(i)])
        return v / v.sum() if v.sum() else None

    cloud = split.cloud_sequences()
    out = np.full(split.n_users, np.nan)
    for u in range(split.n_users):
        a, b = mix(cloud[u]), mix(split.stream_events(u)[0])
        if a is not None and b is not None:
            out[u] = 0.5 * np.abs(a - b).sum()
    return out


@dataclass(frozen=True)
class Cell:
    scenario: str
    variant: str
    ndcg: float  # fleet NDCG@10 (events weighted)
    requests: float  # request ratio
    vs_system: dict[str, tuple[float, float, float, int]]  # slice -> (diff, low, high, devices)


def run(models: Path, out: Path, users: int | None = None, scenarios: tuple[str, ...] = ("steady", "engagement"),
        say: Callable[[str], None] = lambda s: None) -> list[Cell]:
    from dcrec.shared.cliutil import load_split
    from dcrec.simulator.report import paired_per_device
    from dcrec.simulator.runner import Models, run_scenario
    from dcrec.simulator.scenario import load_scenario

    m = Models(cloud_model=models / "cloud", registry=models / "registry")
    cells: list[Cell] = []
    for name in scenarios:
        runs = {}
        for variant, sets in VARIANTS.items():
            sc = load_scenario(name, ['policies=["system"]', *sets], users=users)
            say(f"{name}: {variant}")
            outcome = run_scenario(sc, m, out / name / variant.strip("-+ ").replace(" ", "-"))
            runs[variant] = outcome.results[0]
        slices: dict[str, set[str] | None] = {"all users": None}
        if name == "steady":
            sc = load_scenario(name)
            ds, split = load_split(sc.dataset, sc.cloud_fraction)
            shift = genre_shift(ds, split)
            devices = runs["system"].per_device
            by_shift = sorted((d for d in devices if not np.isnan(shift[devices[d][0]])),
                              key=lambda d: -shift[devices[d][0]])
            top = max(1, round(SLICE * len(by_shift)))
            slices["drifting quarter"] = set(by_shift[:top])
            slices["the rest"] = set(by_shift[top:])
            say(f"steady: genre shift of the drifting quarter >= {shift[devices[by_shift[top - 1]][0]]:.3f} "
                f"(median of all users {np.nanmedian(shift):.3f})")
        base = runs["system"]
        for variant, r in runs.items():
            s = r.summary()
            vs = {} if r is base else {k: paired_per_device(r, base, devices=v) for k, v in slices.items()}
            cells.append(Cell(name, variant, s["NDCG@10"], s["request_ratio"], vs))
    (out / "adaptation.json").write_text(json.dumps([c.__dict__ for c in cells], indent=2))
    return cells


def markdown(cells: list[Cell]) -> str:
    slices = sorted({k for c in cells for k in c.vs_system}, key=["all users", "drifting quarter",
                                                                   "the rest"].index)
    head = "| workload | variant | NDCG@10 | requests | " + " | ".join(
        f"minus the system, {s} [95 % CI]" for s in slices) + " |"
    lines = [head, "|" + "---|" * (4 + len(slices))]
    for c in cells:
        diffs = [(f"{c.vs_system[s][0]:+.4f} [{c.vs_system[s][1]:+.4f}, {c.vs_system[s][2]:+.4f}]"
                  if s in c.vs_system else "-") for s in slices]
        lines.append(f"| {c.scenario} | {c.variant} | {c.ndcg:.4f} | {c.requests:.1%} | "
                     + " | ".join(diffs) + " |")
    return "\n".join(lines)
