"""Benchmark textrec on a leave-one-out split: quality, id-only ablation, cold start.

Trains through the backend contract (``dcrec.cloud.models.backends.train``), so the numbers
are those of the model the server would load. Ranks the full catalogue with
the user's already-seen items excluded (``dcrec.shared.metrics.ranks_from_scores``).

Usage::

    python -m dcrec.cloud.models.textrec.evaluate --dataset beauty --out runs/textrec-beauty
    python -m dcrec.cloud.models.textrec.evaluate --dataset beauty --out runs/cold --cold-fraction 0.05
    python -m dcrec.cloud.models.textrec.evaluate --dataset ml-100k --out runs/ml --set epochs=5 --set dim=32

Writes ``results.json`` in ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.models import backends
from dcrec.cloud.models.textrec.backend import TextRecGenerator
from dcrec.shared.data import Dataset, load_dataset
from dcrec.shared.metrics import ranks_from_scores, summarize
from dcrec.shared.splits import EvalSet, leave_one_out

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "textrec": {},
    # The same model with item text read by the generative LLM (SmolLM2's hidden states)
    # instead of the sentence embedder.
    "textrec-smollm2": {"text_encoder": "smollm2"},
    # SASRec with the same loop and loss: no text, nothing to drop out for cold start.
    "id-only": {"use_text": False, "id_dropout": 0.0},
    # The public SASRec+SS reference for Amazon Beauty (eSASRec benchmark, arXiv 2508.06450):
    # one block, one head, d=64, dropout 0.2, sampled softmax over 256 uniform negatives,
    # up to 200 epochs with patience 50.
    "sasrec-ss": {"use_text": False, "id_dropout": 0.0, "n_layers": 1, "n_heads": 1, "dim": 64,
                  "dropout": 0.2, "loss": "sampled", "n_negatives": 256, "epochs": 200,
                  "patience": 50, "ffn_mult": 1, "batch_size": 128},
}


def rank_test_set(gen: TextRecGenerator, test: EvalSet, batch: int = 1024) -> np.ndarray:
    """(M,) full-catalogue ranks of the test targets, seen items excluded."""
    out = []
    for s in range(0, len(test), batch):
        hists = test.histories[s : s + batch]
        scores = gen.score(hists)
        seen = np.zeros(scores.shape, dtype=bool)
        for i, h in enumerate(hists):
            seen[i, h] = True
        out.append(ranks_from_scores(scores, test.targets[s : s + batch], seen))
    return np.concatenate(out)


def popularity_ranks(train: Sequence[np.ndarray], n_items: int, test: EvalSet) -> np.ndarray:
    """Most-popular baseline: rank by training counts, seen items excluded."""
    counts = np.bincount(np.concatenate(list(train)), minlength=n_items + 1).astype(np.float64)
    scores = np.broadcast_to(counts, (len(test), n_items + 1))
    seen = np.zeros(scores.shape, dtype=bool)
    for i, h in enumerate(test.histories):
        seen[i, h] = True
    return ranks_from_scores(scores, test.targets, seen)


def train_and_rank(name: str, ds: Dataset, train: list[np.ndarray], test: EvalSet, out: Path,
                   options: dict[str, Any], resume: bool) -> tuple[np.ndarray, dict[str, Any]]:
    t0 = time.perf_counter()
    backends.train("textrec", ds, train, out / name, {**options, **VARIANTS[name]}, resume=resume)
    wall = time.perf_counter() - t0
    gen = backends.load_generator(out / name)
    assert isinstance(gen, TextRecGenerator)
    meta = json.loads((out / name / "config.json").read_text())
    info = {"wall_s": round(wall, 1), "train_s": meta["train_seconds"], "cpu_s": meta["cpu_seconds"],
            "epochs_run": meta["epochs_run"], "best_epoch": meta["best_epoch"],
            "stopped_by": meta["stopped_by"], "valid_ndcg10": round(meta["valid_ndcg10"], 4)}
    return rank_test_set(gen, test), info


def run_variant(dataset: str, name: str, out: Path, options: dict[str, Any],
                resume: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Train one variant on the leave-one-out split of ``dataset``; its test ranks and info."""
    if not logging.getLogger().handlers:  # a spawned worker process
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(name)s %(message)s")
    ds = load_dataset(dataset)
    split = leave_one_out(ds)
    return train_and_rank(name, ds, split.train, split.test, out, options, resume)


def cold_start(ds: Dataset, fraction: float, seed: int, out: Path, options: dict[str, Any],
               resume: bool) -> dict[str, Any]:
    """Hold ``fraction`` of the items out of training entirely; score their test users."""
    split = leave_one_out(ds)
    rng = np.random.default_rng([seed, 11])
    n_cold = max(1, round(fraction * ds.n_items))
    cold = np.zeros(ds.n_items + 1, dtype=bool)
    cold[rng.choice(np.arange(1, ds.n_items + 1), size=n_cold, replace=False)] = True
    train = [s[~cold[s]] for s in split.train]
    idx = np.flatnonzero(cold[split.test.targets])
    test_cold = split.test.take(idx)
    log.info("cold start: %d items held out, %d test users with a cold target", n_cold, len(idx))
    result: dict[str, Any] = {"cold_items": n_cold, "cold_test_users": len(idx)}
    ranks, info = train_and_rank("textrec", ds, train, test_cold, out, options, resume)
    result["textrec"] = {"HR@20": summarize(ranks)["HR@20"], **info}
    result["popularity"] = {"HR@20": summarize(popularity_ranks(train, ds.n_items, test_cold))["HR@20"]}
    return result


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default="textrec,id-only", help="comma list of " + ",".join(VARIANTS))
    p.add_argument("--cold-fraction", type=float, default=0.0,
                   help="instead: hold this share of items out of training, report cold-start HR@20")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. --set epochs=50 (JSON values)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many variants at once, one process each (keep threads=1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    ds = load_dataset(args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"dataset": ds.describe(), "options": options,
                               "protocol": "leave-one-out, fresh history, full catalogue, seen items excluded"}
    if args.cold_fraction > 0:
        results["cold_start"] = cold_start(ds, args.cold_fraction, int(options.get("seed", 0)),
                                           args.out, options, args.resume)
        c = results["cold_start"]
        print(f"cold start ({c['cold_items']} items held out, {c['cold_test_users']} test users): "
              f"HR@20 textrec {c['textrec']['HR@20']:.4f} vs popularity {c['popularity']['HR@20']:.4f}")
    else:
        split = leave_one_out(ds)
        names = args.variants.split(",")
        for name in names:
            if name not in VARIANTS:
                p.error(f"unknown variant {name!r}")
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futures = {n: pool.submit(run_variant, args.dataset, n, args.out, options, args.resume)
                       for n in names}
            for name, fut in futures.items():
                ranks, info = fut.result()
                results[name] = {**{k: round(v, 4) for k, v in summarize(ranks).items()}, **info}
        results["popularity"] = {k: round(v, 4) for k, v in
                                 summarize(popularity_ranks(split.train, ds.n_items, split.test)).items()}
        cols = ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"]
        print(f"{'model':<12}" + "".join(f"{c:>9}" for c in cols) + "  train_s epochs")
        for name in [*args.variants.split(","), "popularity"]:
            r = results[name]
            extra = f"  {r['train_s']:7.0f} {r['epochs_run']:6d}" if "train_s" in r else ""
            print(f"{name:<12}" + "".join(f"{r[c]:9.4f}" for c in cols) + extra)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
