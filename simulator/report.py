"""The run's outputs: CSV over time, JSON summary, PNG plots and an HTML report.

``write_report(out, scenario, results, checks)`` writes into ``out``:

* ``timeseries.csv`` one row per policy and bin of simulated time;
* ``summary.json`` run-wide figures per policy and the checks;
* ``plots/*.png`` one figure per concern (quality, requests, load, latency,
  bytes, list age), policies overlaid, fault windows shaded;
* ``report.html`` a self-contained page (the PNGs are embedded) that any
  browser opens offline.

Example::

    html = write_report(Path("runs/sim/steady"), scenario, results, checks)
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402

from dcrec.simulator.fleet import FleetResult  # noqa: E402
from dcrec.simulator.metrics import write_csv  # noqa: E402
from dcrec.simulator.scenario import Scenario  # noqa: E402

# (file stem, title, y label, [(column, style label)], log scale)
_PLOTS: list[tuple[str, str, str, list[tuple[str, str]], bool]] = [
    ("quality", "Quality of the shown list", "", [("HR@{k}", "HR@{k}"), ("NDCG@{k}", "NDCG@{k}")], False),
    ("requests", "Requests per event, by reason", "request ratio", [("request_ratio", "all")], False),
    ("load", "Cloud load", "calls per simulated second",
     [("request_qps", "event-triggered"), ("failed_qps", "failed"), ("bootstrap_qps", "first lists")],
     False),
    ("latency", "Request latency (wall clock)", "ms",
     [("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")], True),
    ("bytes", "Payload bytes per bin", "bytes", [("bytes_up", "sent"), ("bytes_down", "received")], False),
    ("age", "Age of the list shown", "simulated seconds",
     [("list_age_mean_s", "mean"), ("list_age_max_s", "max")], False),
    ("events", "Device events per bin", "events", [("events", "events")], False),
]


def _time_axis(rows: list[dict[str, float | int | str]]) -> tuple[list[float], str]:
    t = [float(r["t_rel_s"]) for r in rows]
    span = max(t) if t else 0.0
    for unit, div in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if span >= 3 * div:
            return [x / div for x in t], unit
    return t, "seconds"


def _plot(stem: str, title: str, ylabel: str, series: list[tuple[str, str]], log: bool,
          results: Sequence[FleetResult], scenario: Scenario, out: Path) -> Path:
    k = scenario.fleet.k
    fig, ax = plt.subplots(figsize=(8.0, 3.4), dpi=100)
    unit = "seconds"
    div = 1.0
    for r in results:
        rows = r.series.rows()
        if not rows:
            continue
        x, unit = _time_axis(rows)
        div = {"days": 86400.0, "hours": 3600.0, "minutes": 60.0}.get(unit, 1.0)
        for col, label in series:
            col = col.format(k=k)
            y = [float(row.get(col, math.nan)) for row in rows]
            name = label.format(k=k) if len(results) == 1 else f"{r.policy} {label.format(k=k)}"
            ax.plot(x, y, label=name, linewidth=1.2, drawstyle="steps-post")
        if stem == "requests" and len(results) == 1:  # one policy: break the ratio down by reason
            for col in sorted(c for c in rows[0] if c.startswith("reason_")):
                y = [int(row[col]) / int(row["events"]) if int(row["events"]) else math.nan
                     for row in rows]
                ax.plot(x, y, label=col.removeprefix("reason_"), linewidth=0.9, linestyle="--",
                        drawstyle="steps-post")
    for f in scenario.faults:
        ax.axvspan(f.at_s / div, (f.at_s + f.duration_s) / div, color="tab:red", alpha=0.15,
                   label=f.kind.replace("_", " "))
    for s in scenario.surges:
        ax.axvspan(s.at_s / div, (s.at_s + s.duration_s) / div, color="tab:orange", alpha=0.12,
                   label="surge")
    if log:
        ax.set_yscale("log")
    elif stem == "load":
        # A fleet coming online asks for its first lists at once; do not let that spike
        # flatten the rest of the run (the CSV has the full figures).
        rest = [float(row["request_qps"]) for r in results for row in r.series.rows()]
        spike = max((float(row["bootstrap_qps"]) for r in results for row in r.series.rows()),
                    default=0.0)
        top = 1.5 * max(rest, default=0.0)
        if top > 0 and spike > top:
            ax.set_ylim(0, top)
            ax.text(0.01, 0.97, f"first lists peak at {spike:.0f}/s (clipped)", transform=ax.transAxes,
                    va="top", fontsize=8, color="tab:green")
    ax.set_title(title)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    fig.tight_layout()
    path = out / "plots" / f"{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if abs(v) >= 1000 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


SUMMARY_COLUMNS = ["HR@{k}", "NDCG@{k}", "request_ratio", "events", "requests", "failed_requests",
                   "cloud_qps_peak", "latency_p50_ms", "latency_p99_ms", "bytes_up", "bytes_down",
                   "list_age_mean_s", "events_per_s", "sim_cpu_ms_per_event", "cloud_cpu_ms_per_event",
                   "memory_per_device_kib", "lost_events", "telemetry_sent"]


def summary_table(results: Sequence[FleetResult], k: int = 10, markdown: bool = True) -> str:
    cols = [c.format(k=k) for c in SUMMARY_COLUMNS]
    head = "| policy | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in results:
        s = r.summary()
        lines.append(f"| {r.policy} | " + " | ".join(_fmt(s.get(c, math.nan)) for c in cols) + " |")
    return "\n".join(lines)


def write_report(out: Path, scenario: Scenario, results: Sequence[FleetResult],
                 checks: dict[str, dict[str, object]] | None = None) -> Path:
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        rows += [{"policy": r.policy, **row} for row in r.series.rows()]
    write_csv(out / "timeseries.csv", rows)
    write_csv(out / "devices.csv", [{"policy": r.policy, "device": d, "user": u, "events": e, "hits": h,
                                     "ndcg": round(n, 9)}
                                    for r in results for d, (u, e, h, n) in sorted(r.per_device.items())])
    summary = {"scenario": scenario.name, "seed": scenario.seed,
               "results": [{"policy": r.policy, **r.summary(),
                            "reasons": dict(r.series.total().reasons),
                            "proxy": vars(r.proxy) if r.proxy else None} for r in results],
               "checks": checks or {}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    figures = [_plot(*spec, results, scenario, out) for spec in _PLOTS]

    k = scenario.fleet.k
    cols = [c.format(k=k) for c in SUMMARY_COLUMNS]
    table = ["<table><tr><th>policy</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for r in results:
        s = r.summary()
        table.append(f"<tr><td>{html.escape(r.policy)}</td>"
                     + "".join(f"<td>{_fmt(s.get(c, math.nan))}</td>" for c in cols) + "</tr>")
    table.append("</table>")
    check_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(c.get('value')))}</td>"
        f"<td>{html.escape(str(c.get('limit')))}</td>"
        f"<td class={'ok' if c.get('ok') else 'bad'}>{'pass' if c.get('ok') else 'FAIL'}</td></tr>"
        for name, c in (checks or {}).items())
    imgs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem} '
        f'(<a href="plots/{p.name}">{p.name}</a>)</figcaption></figure>' for p in figures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dcrec fleet: {html.escape(scenario.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
td.ok {{ color: #176e2a; font-weight: bold; }} td.bad {{ color: #b00020; font-weight: bold; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>Fleet simulation: {html.escape(scenario.name)}</h1>
<p>{html.escape(scenario.description)}</p>
<h2>Summary</h2>
<div style="overflow-x: auto">{''.join(table)}</div>
{'<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>limit</th><th></th></tr>' + check_rows + '</table>' if check_rows else ''}
<h2>Over simulated time</h2>
{imgs}
<h2>Scenario</h2>
<pre>{html.escape(scenario.source)}</pre>
<p>Files: <a href="timeseries.csv">timeseries.csv</a>, <a href="summary.json">summary.json</a>.</p>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path


def paired_per_device(a: FleetResult, b: FleetResult, draws: int = 2000, seed: int = 0,
                      devices: Collection[str] | None = None) -> tuple[float, float, float, int]:
    """NDCG@k of run ``a`` minus run ``b`` over the devices both ran (or those of ``devices``),
    each device's mean over its own events, with a 95 % paired bootstrap interval over devices:
    (difference, low, high, number of devices)."""
    common = sorted(d for d in a.per_device if d in b.per_device and a.per_device[d][1]
                    and b.per_device[d][1] and (devices is None or d in devices))
    if not common:
        raise ValueError(f"runs {a.policy} and {b.policy} share no device with events")
    diff = np.array([a.per_device[d][3] / a.per_device[d][1] - b.per_device[d][3] / b.per_device[d][1]
                     for d in common])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, (draws, diff.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(lo), float(hi), diff.size
