"""Tables, CSV and the plot for the quality harness (mean and std over seeds)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from dcrec.simulator.bench.quality import Row

COLUMNS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "recall@list")
ORDER = ("cloud-stale", "cloud-fresh", "device-only", "neighbour-index", "fusion", "always-fresh")


def _key(r: Row) -> tuple[str, float | None]:
    return (r.variant, r.ratio)


def aggregate(rows: list[Row]) -> dict[tuple[str, float | None], dict[str, tuple[float, float]]]:
    """(variant, ratio) -> metric -> (mean, std over seeds)."""
    groups: dict[tuple[str, float | None], list[Row]] = defaultdict(list)
    for r in rows:
        groups[_key(r)].append(r)
    out = {}
    for key, rs in groups.items():
        names = rs[0].metrics.keys()
        out[key] = {n: (float(np.mean([r.metrics[n] for r in rs])),
                        float(np.std([r.metrics[n] for r in rs]))) for n in names}
    return out


def _sort_key(key: tuple[str, float | None]) -> tuple[int, float, str]:
    variant, ratio = key
    if variant in ORDER:
        return (0, ORDER.index(variant), "")
    if variant.startswith("LOO"):
        return (2, 0.0, variant)
    return (1, ratio or 0.0, variant)


def markdown(rows: list[Row]) -> str:
    agg = aggregate(rows)
    seeds = len({r.seed for r in rows})
    fmt = (lambda m, s: f"{m:.4f} ± {s:.4f}") if seeds > 1 else (lambda m, s: f"{m:.4f}")
    head = "| variant | requests | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for key in sorted(agg, key=_sort_key):
        variant, ratio = key
        m = agg[key]
        if ratio is None:
            req = {"cloud-fresh": "100%", "always-fresh": "100%"}.get(variant, "0%")
            req = "-" if variant.startswith("LOO") else req
            name = variant
        else:
            req = f"{m['measured_ratio'][0] * 100:.1f}%"
            name = f"fusion + {variant} r={ratio * 100:.0f}%"
        lines.append(f"| {name} | {req} | " + " | ".join(fmt(*m[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    names = sorted({n for r in rows for n in r.metrics})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "ratio", "seed", *names])
        for r in rows:
            w.writerow([r.variant, "" if r.ratio is None else r.ratio, r.seed,
                        *[f"{r.metrics.get(n, float('nan')):.6f}" for n in names]])


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for variant, style in (("random", "o--"), ("disagreement", "s-")):
        pts = sorted((k[1], v) for k, v in agg.items() if k[0] == variant)
        if not pts:
            continue
        xs = [v["measured_ratio"][0] * 100 for _, v in pts]
        ys = np.array([v["NDCG@10"][0] for _, v in pts])
        sd = np.array([v["NDCG@10"][1] for _, v in pts])
        ax.plot(xs, ys, style, label=f"fusion + {variant} requests")
        ax.fill_between(xs, ys - sd, ys + sd, alpha=0.15)
    for variant, color in (("cloud-stale", "grey"), ("always-fresh", "green"),
                           ("device-only", "purple")):
        if (variant, None) in agg:
            ax.axhline(agg[(variant, None)]["NDCG@10"][0], color=color, ls=":", label=variant)
    ax.set_xlabel("cloud requests (% of users)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def requests_table(rows: list[Row], infos: list[dict] | None = None) -> str:  # type: ignore[type-arg]
    """What each request policy buys at each ratio: NDCG@10 of random, disagreement, learned and
    the oracle (mean over seeds), learned minus random with its 95 % paired interval over users
    (per seed), the share of the random-to-oracle gap learned closes, and the seeds it wins."""
    by: dict[tuple[str, float | None, int], dict[str, float]] = {
        (r.variant, r.ratio, r.seed): r.metrics for r in rows}
    seeds = sorted({r.seed for r in rows})
    ratios = sorted({r.ratio for r in rows if r.variant == "learned" and r.ratio is not None})
    if not ratios:
        return ""
    lines = ["| requests | random | disagreement | learned | oracle | learned - random [95 % CI] per seed "
             "| gap closed | seeds won |", "|---|---|---|---|---|---|---|---|"]
    for r in ratios:
        def mean(variant: str, r: float = r) -> str:
            got = [by[(variant, r, s)]["NDCG@10"] for s in seeds if (variant, r, s) in by]
            return f"{np.mean(got):.4f}" if got else "-"

        learned = [by[("learned", r, s)] for s in seeds if ("learned", r, s) in by]
        cis = "; ".join(f"{m['vs_random']:+.4f} [{m['vs_random_lo']:+.4f}, {m['vs_random_hi']:+.4f}]"
                        for m in learned)
        won = sum(m["vs_random"] > 0 for m in learned)
        share = np.mean([m["oracle_share"] for m in learned])
        lines.append(f"| {r * 100:.0f}% | {mean('random')} | {mean('disagreement')} | {mean('learned')} "
                     f"| {mean('oracle')} | {cis} | {share:.1%} | {won}/{len(learned)} |")
    if infos:
        q = [i["qini_learned"] for i in infos if "qini_learned" in i]
        qd = [i["qini_disagreement"] for i in infos if "qini_disagreement" in i]
        if q:
            lines.append(f"\nQini coefficient on test (1 = oracle, 0 = random): learned "
                         f"{np.mean(q):.3f}, the disagreement measure {np.mean(qd):.3f} "
                         f"(mean over {len(q)} seed(s)).")
    return "\n".join(lines)


# The headline's rows: (label, variant, at the system's ratio?), the system first.
HEADLINE = (
    ("the system (fusion + learned requests)", "learned", True),
    ("never: fusion, no request after the first list", "fusion", False),
    ("random requests at the same budget", "random", True),
    ("disagreement (regret) requests at the same budget", "disagreement", True),
    ("always: a fresh list on every event", "always-fresh", False),
    ("the fresh cloud list alone", "cloud-fresh", False),
    ("the device model alone", "device-only", False),
    ("the neighbour index's local list alone", "neighbour-index", False),
    ("the stale cloud list alone", "cloud-stale", False),
    ("leave-one-out: the cloud", "LOO cloud", False),
    ("leave-one-out: SASRec (reproduced reference)", "LOO sasrec", False),
)


def headline(rows: list[Row], system: str, ratio: float) -> str:
    """The system's table: the system at its request budget, then every baseline the run has
    (named as overrides of the system), NDCG@10 and HR@10, mean ± std over seeds, and for the
    system its gain over random with each seed's 95 % paired interval over users."""
    agg = aggregate(rows)
    seeds = len({r.seed for r in rows})
    lines = [f"The system ({system}), {seeds} seed(s), request budget {ratio * 100:.0f} %:", "",
             "| row | requests | NDCG@10 | HR@10 |", "|---|---|---|---|"]
    for label, variant, at_ratio in HEADLINE:
        key = (variant, ratio if at_ratio else None)
        if key not in agg:
            continue
        m = agg[key]
        if at_ratio:
            req = f"{m['measured_ratio'][0] * 100:.1f}%"
        else:
            req = {"cloud-fresh": "100%", "always-fresh": "100%"}.get(variant, "0%")
            req = "-" if variant.startswith("LOO") else req
        lines.append(f"| {label} | {req} | {m['NDCG@10'][0]:.4f} ± {m['NDCG@10'][1]:.4f} | "
                     f"{m['HR@10'][0]:.4f} ± {m['HR@10'][1]:.4f} |")
    learned = [r.metrics for r in rows if r.variant == "learned" and r.ratio == ratio]
    if learned and "vs_random" in learned[0]:
        cis = "; ".join(f"{m['vs_random']:+.4f} [{m['vs_random_lo']:+.4f}, {m['vs_random_hi']:+.4f}]"
                        for m in learned)
        lines.append(f"\nThe system minus random at {ratio * 100:.0f} %, NDCG@10, per seed "
                     f"(95 % paired bootstrap over users): {cis}.")
    return "\n".join(lines)
