"""Offline figures for the generative backend: validity, ranking quality, latency.

Leave-one-out test set (fresh history), full-catalogue metrics: the target's
position in the returned list, a missing target a miss
(:func:`dcrec.shared.metrics.ranks_in_lists`). Every returned id is checked to be in
``1..n_items`` and distinct. Progress is written to ``--out`` after every
batch, so a long run that is stopped still reports how many users it covered.

Usage::

    python -m dcrec.cloud.models.llm.evaluate --data beauty --model-dir runs/llm-beauty \\
        --users 500 --seed 0 --count 20 --threads 1 --latency 50 --out runs/llm-beauty/eval.json
    python -m dcrec.cloud.models.llm.evaluate --data beauty --model-dir runs/llm-beauty --users all \\
        --latency 0 --out runs/llm-beauty/validity.json      # the whole test set

The whole test set in parallel: ``--part 1/2`` and ``--part 2/2`` in two
processes take disjoint slices of the same random order; each also writes its
lists (``<out>.lists.npz``), and ``--merge A.json B.json --out all.json``
combines the parts into one report, checking that they cover the order once::

    python -m dcrec.cloud.models.llm.evaluate ... --users all --part 1/2 --out runs/llm-beauty/part1.json &
    python -m dcrec.cloud.models.llm.evaluate ... --users all --part 2/2 --out runs/llm-beauty/part2.json
    python -m dcrec.cloud.models.llm.evaluate --merge runs/llm-beauty/part1.json runs/llm-beauty/part2.json \\
        --out runs/llm-beauty/validity.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcrec.cloud.models import backends
from dcrec.shared.data import load_dataset
from dcrec.shared.fileio import replacing, write_atomic
from dcrec.shared.metrics import ranks_in_lists, summarize
from dcrec.shared.splits import leave_one_out

log = logging.getLogger(__name__)


def check_lists(lists: np.ndarray, n_items: int) -> tuple[int, int]:
    """(invalid ids, duplicate ids) in ``lists`` (B, C), where 0 pads short lists."""
    real = lists[lists != 0]
    invalid = int(((real < 1) | (real > n_items)).sum())
    dups = sum(len(row[row != 0]) - len(np.unique(row[row != 0])) for row in lists)
    return invalid, int(dups)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    split = leave_one_out(ds)
    model_dir = Path(args.model_dir)
    if not (model_dir / backends.MANIFEST).is_file():
        backends.train("llm", ds, split.train, model_dir, json.loads(args.options))
    t0 = time.perf_counter()
    gen = backends.load_generator(model_dir)
    torch.set_num_threads(args.threads)  # the model's own setting must not win here
    load_s = time.perf_counter() - t0
    test = split.test
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(test))
    if args.users != "all":
        order = order[: int(args.users)]
    part, n_parts = parse_part(args.part)
    lo, hi = part_bounds(len(order), part, n_parts)
    order = order[lo:hi]
    report: dict[str, Any] = {
        "data": args.data, "model_dir": str(model_dir), "version": gen.version, "count": args.count,
        "seed": args.seed, "threads": args.threads, "test_users": len(test), "load_s": round(load_s, 2),
        "users": args.users, "part": [part, n_parts], "order_slice": [int(lo), int(hi)],
    }
    lists = np.zeros((len(order), args.count), dtype=np.int64)
    invalid = dups = short = 0
    t0 = time.perf_counter()
    batch = args.batch
    done = 0
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        cands = gen.generate([test.histories[i] for i in idx], args.count, exclude_seen=True)
        for j, c in enumerate(cands):
            lists[start + j, : len(c.items)] = c.items
            short += int(len(c.items) < args.count)
        done = start + len(idx)
        bad, dup = check_lists(lists[start:done], gen.n_items)
        invalid, dups = invalid + bad, dups + dup
        ranks = ranks_in_lists(lists[:done], test.targets[order[:done]])
        elapsed = time.perf_counter() - t0
        report.update({
            "users_done": done, "invalid_ids": invalid, "duplicate_ids": dups, "short_lists": short,
            "seconds": round(elapsed, 1), "seconds_per_user": round(elapsed / done, 3),
            "metrics": {k: round(v, 5) for k, v in summarize(ranks).items()},
            "load_average": list(np.round(_loadavg(), 2)),
        })
        if args.out:
            _write(Path(args.out), report)
            _write_lists(Path(args.out), order[:done], lists[:done])
        log.info("%d/%d users, %.2f s/user, invalid %d, %s", done, len(order), elapsed / done,
                 invalid, report["metrics"])

    if args.latency:
        times = []
        for i in order[: args.latency]:
            t = time.perf_counter()
            gen.generate([test.histories[i]], args.count, exclude_seen=True)
            times.append((time.perf_counter() - t) * 1000.0)
        report["latency_ms"] = {
            "requests": len(times), "p50": round(float(np.percentile(times, 50)), 1),
            "p99": round(float(np.percentile(times, 99)), 1), "mean": round(float(np.mean(times)), 1),
        }
        report["load_average_after"] = list(np.round(_loadavg(), 2))
        if args.out:
            _write(Path(args.out), report)
    return report


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 1 <= I <= N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 1/2), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--part {text!r}: need 1 <= I <= N")
    return i, n


def part_bounds(total: int, part: int, n_parts: int) -> tuple[int, int]:
    """The slice [lo, hi) of ``total`` positions that part ``part`` of ``n_parts`` covers."""
    return total * (part - 1) // n_parts, total * part // n_parts


def lists_path(out: Path) -> Path:
    return out.with_suffix(".lists.npz")


def _write_lists(out: Path, users: np.ndarray, lists: np.ndarray) -> None:
    with replacing(lists_path(out)) as tmp:
        np.savez_compressed(tmp, users=users, lists=lists)


def merge(paths: list[Path], data: str | None = None) -> dict[str, Any]:
    """One report from part reports of the same run; metrics recomputed from their lists."""
    if not paths:
        raise ValueError("--merge needs at least one part report")
    reports = [json.loads(p.read_text()) for p in paths]
    first = reports[0]
    for p, r in zip(paths, reports, strict=True):
        for key in ("data", "version", "count", "seed", "users", "test_users"):
            if r.get(key) != first.get(key):
                raise ValueError(f"{p}: {key} {r.get(key)!r} differs from {paths[0]}'s {first.get(key)!r}")
    n_parts = first["part"][1]
    parts = sorted(r["part"][0] for r in reports)
    if parts != list(range(1, n_parts + 1)) or any(r["part"][1] != n_parts for r in reports):
        raise ValueError(f"parts {parts} of {n_parts}: need each of 1..{n_parts} exactly once")
    unfinished = [str(p) for p, r in zip(paths, reports, strict=True)
                  if r.get("users_done") != r["order_slice"][1] - r["order_slice"][0]]
    if unfinished:
        raise ValueError(f"parts not finished: {unfinished}")
    users = []
    lists = []
    for p in paths:
        with np.load(lists_path(p)) as z:
            users.append(z["users"])
            lists.append(z["lists"])
    all_users = np.concatenate(users)
    all_lists = np.concatenate(lists)
    if len(np.unique(all_users)) != len(all_users):
        raise ValueError("the parts overlap: a test user appears twice")
    ds = load_dataset(data or first["data"])
    test = leave_one_out(ds).test
    n_items = ds.n_items
    invalid, dups = check_lists(all_lists, n_items)
    ranks = ranks_in_lists(all_lists, test.targets[all_users])
    seconds = sum(r["seconds"] for r in reports)
    return {
        "data": first["data"], "version": first["version"], "count": first["count"], "seed": first["seed"],
        "users": first["users"], "test_users": first["test_users"], "parts": [str(p) for p in paths],
        "users_done": int(len(all_users)), "invalid_ids": invalid, "duplicate_ids": dups,
        "short_lists": sum(r["short_lists"] for r in reports),
        "cpu_seconds": round(seconds, 1), "seconds_per_user": round(seconds / len(all_users), 3),
        "wall_seconds": round(max(r["seconds"] for r in reports), 1),
        "metrics": {k: round(v, 5) for k, v in summarize(ranks).items()},
    }


def _loadavg() -> tuple[float, float, float]:
    """The machine's 1/5/15-minute load: timings on a shared CPU mean little without it."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="beauty")
    p.add_argument("--model-dir", default="", help="trained llm directory; trained here if missing")
    p.add_argument("--options", default="{}", help="JSON options for training when the directory is missing")
    p.add_argument("--users", default="500", help="test users to rank (a fixed random sample), or 'all'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=20, help="candidates per request")
    p.add_argument("--batch", type=int, default=8, help="users per generate() call")
    p.add_argument("--threads", type=int, default=1, help="torch threads (oversubscribing a shared CPU is 10x slower)")
    p.add_argument("--latency", type=int, default=50, help="single-user requests to time afterwards (0: none)")
    p.add_argument("--part", default="1/1", help="I/N: only the I-th of N equal slices of the user order")
    p.add_argument("--out", default="", help="JSON report, rewritten after every batch")
    p.add_argument("--merge", nargs="+", metavar="PART_JSON", help="combine finished part reports into --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.merge:
            report = merge([Path(m) for m in args.merge])
            if args.out:
                _write(Path(args.out), report)
        else:
            if not args.model_dir:
                raise ValueError("--model-dir is required (unless --merge)")
            parse_part(args.part)
            report = evaluate(args)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
