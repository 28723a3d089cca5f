"""Leave-one-out quality of a trained cloud model, through the offline harness's functions.

Protocol (the literature's; README.md, "The evaluation protocol"): each user's newest item is the
target, the rest of the sequence is the (fresh) history; the model ranks the
full catalogue and we read its top-``count`` list, so a target outside the
list is a miss (``dcrec.shared.metrics.ranks_in_lists``). Lists come from the
generator's own batch call via ``dcrec.simulator.bench.scoring.cloud_lists``, the
same path the harness and the server use.

Example::

    result = evaluate_loo(load_generator("runs/cloud"), load_dataset("ml-100k"), count=100)
    print(markdown(result))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.shared.data import Dataset
from dcrec.shared.metrics import ndcg_gains, ranks_in_lists, summarize
from dcrec.shared.splits import leave_one_out

log = logging.getLogger(__name__)


@dataclass
class LooResult:
    backend: str
    version: str
    dataset: str
    users: int
    count: int  # list length: ranks beyond it are misses
    seconds: float  # wall clock of generating every list
    metrics: dict[str, float] = field(default_factory=dict)
    # Each test user's NDCG@10, in test order (for paired comparisons; not written to JSON).
    per_user_ndcg10: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def summary(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "per_user_ndcg10"}


@dataclass(frozen=True)
class PairedDifference:
    """NDCG@10 of one model minus another's over the same users, with a bootstrap interval."""

    model: str
    baseline: str
    difference: float
    low: float
    high: float
    ratio: float
    users: int


def paired_difference(a: LooResult, b: LooResult, resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """Mean per-user NDCG@10 of ``a`` minus ``b``; percentile bootstrap over users, paired."""
    from scipy.stats import bootstrap

    if a.per_user_ndcg10.shape != b.per_user_ndcg10.shape or a.dataset != b.dataset:
        raise ValueError(f"{a.version} and {b.version} were not evaluated on the same users")
    diff = a.per_user_ndcg10 - b.per_user_ndcg10
    ci = bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=confidence,
                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    base = float(b.per_user_ndcg10.mean())
    return PairedDifference(a.version, b.version, float(diff.mean()), float(ci.low), float(ci.high),
                            float(a.per_user_ndcg10.mean()) / base if base > 0 else float("inf"),
                            len(diff))


def evaluate_loo(gen: CandidateGenerator, ds: Dataset, count: int = 100,
                 max_users: int | None = None, seed: int = 0, batch: int = 256) -> LooResult:
    """HR@k, NDCG@k (k = 5, 10, 20), MRR and recall of the top-``count`` list, leave-one-out."""
    from dcrec.simulator.bench.scoring import cloud_lists

    if gen.n_items != ds.n_items:
        raise ValueError(f"the model knows {gen.n_items} items but {ds.name} has {ds.n_items}: "
                         "it was trained on another data set")
    if count < 20:
        raise ValueError(f"count must be >= 20 (NDCG@20 needs 20 places), got {count}")
    test = leave_one_out(ds).test
    if max_users is not None and max_users < len(test):
        rng = np.random.default_rng(seed)
        test = test.take(np.sort(rng.choice(len(test), max_users, replace=False)))
    start = time.perf_counter()
    items, _ = cloud_lists(gen, test.histories, count, batch=batch)
    seconds = time.perf_counter() - start
    ranks = ranks_in_lists(items, test.targets)
    metrics = summarize(ranks)
    metrics["recall@list"] = float((ranks >= 0).mean())
    per_user = ndcg_gains(ranks, 10)
    log.info("LOO %s on %s: %d users in %.1fs", gen.version, ds.name, len(test), seconds)
    return LooResult(gen.name, gen.version, ds.name, len(test), count, seconds, metrics, per_user)


def markdown(results: list[LooResult]) -> str:
    """One row per result, in the harness's column order (simulator.bench.report)."""
    from dcrec.simulator.bench.report import COLUMNS

    head = "| model | data | users | list | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in results:
        cells = " | ".join(f"{r.metrics[c]:.4f}" for c in COLUMNS)
        lines.append(f"| {r.version} | {r.dataset} | {r.users} | top-{r.count} | {cells} |")
    return "\n".join(lines)
