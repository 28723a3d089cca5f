"""The ``ensemble`` backend: several trained backends, their scores blended.

Each member is a whole backend (``textrec`` with the sentence embedder, the
same model with the LLM's item representations, SASRec, co-occurrence, ...)
trained on the same sequences into ``members/<i>-<name>/``. A member's
full-catalogue scores are turned into log-probabilities (``log_softmax`` per
user), and the ensemble's score is their weighted sum. The weights are
chosen on held-out validation users, never on test data: the newest training
item of ``valid_users`` random users (the same users every ``textrec`` member
holds out for its own early stopping, so no member has trained on them), by
coordinate ascent over a geometric grid of relative weights, for NDCG@10
with seen items excluded.

Options: ``members`` (list of ``{"backend": NAME, "options": {...}}``; default
:data:`DEFAULT_MEMBERS`), ``valid_users`` (3000), ``seed`` (0, passed to every
member), ``weight_rounds`` (3, passes of the weight search), ``threads`` (1). A member already
trained in its directory with the same backend, options and data is reused,
so a second ``train`` (or one after an interruption) only trains what is
missing; ``textrec`` members also resume from their own checkpoints.

Model directory: ``ensemble.json`` (members, weights, validation figures),
``members/``, and ``backend.json`` written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcrec.cloud.models.backends import read_manifest, write_manifest
from dcrec.cloud.models.generator import CandidateList, catalogue_scores, checked_histories, top_k
from dcrec.cloud.models.textrec.backend import holdout_valid
from dcrec.shared.data import Dataset
from dcrec.shared.fileio import write_atomic
from dcrec.shared.metrics import ranks_from_scores, summarize

log = logging.getLogger(__name__)

NAME = "ensemble"
# Options every textrec-family member must share with the ensemble, so that all of
# them hold out the same validation users.
_SHARED = ("seed", "valid_users", "threads")
# The default: the text-aware transformer (sentence-embedder item text) and the co-occurrence
# table, blended on validation (docs/CLOUD_MODELS.md has the measurements behind the choice).
DEFAULT_MEMBERS: tuple[dict[str, Any], ...] = (
    {"backend": "textrec", "options": {"patience": 10, "time_budget_min": 150}},
    {"backend": "cooccurrence", "options": {}},
)
DEFAULTS: dict[str, Any] = {"members": list(DEFAULT_MEMBERS), "valid_users": 3000, "seed": 0,
                            "weight_rounds": 3, "threads": 1}
SCORE_BATCH = 512


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown ensemble options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    members = opts["members"]
    if not isinstance(members, list) or not members:
        raise ValueError("ensemble option 'members' must be a non-empty list of "
                         "{'backend': NAME, 'options': {...}}")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or set(m) - {"backend", "options"} or "backend" not in m:
            raise ValueError(f"ensemble member {i}: expected {{'backend': NAME, 'options': {{...}}}}, got {m!r}")
        if m["backend"] == NAME:
            raise ValueError(f"ensemble member {i}: an ensemble cannot contain an ensemble")
    if int(opts["weight_rounds"]) < 1:
        raise ValueError(f"weight_rounds must be >= 1, got {opts['weight_rounds']}")
    return opts


def _member_options(member: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    own = dict(member.get("options") or {})
    if member["backend"] == "textrec":
        for k in _SHARED:
            own.setdefault(k, opts[k])
    return own


def _data_key(sequences: Sequence[np.ndarray], n_items: int) -> str:
    h = hashlib.sha256(str(n_items).encode())
    for s in sequences:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def member_score(gen: Any, histories: Sequence[np.ndarray]) -> np.ndarray:
    """(B, N+1) float64 log-probabilities over the catalogue from one member (column 0: -inf)."""
    s = catalogue_scores(gen, histories)
    s[:, 0] = -np.inf
    top = s.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(s - top).sum(axis=1, keepdims=True))
    return s - lse


# Relative weights a member may take. Rankings do not change when all weights are scaled
# together, so only ratios matter; members' log-probabilities differ in sharpness by orders
# of magnitude (a co-occurrence table's are far sharper than a softmax model's), hence a
# geometric grid.
WEIGHT_GRID = (0.0, *(2.0 ** e for e in range(-6, 7)))


def choose_weights(member_scores: list[np.ndarray], histories: Sequence[np.ndarray],
                   targets: np.ndarray, rounds: int = 3) -> tuple[np.ndarray, dict[str, float]]:
    """Blend weights by validation NDCG@10; the figures of the blend and of each member.

    Starts from the best member alone and improves one member's weight at a time over
    :data:`WEIGHT_GRID` (coordinate ascent, ``rounds`` passes), so the blend is never worse
    on validation than its best member. Returned weights sum to 1.
    """
    seen = np.zeros(member_scores[0].shape, dtype=bool)
    for i, h in enumerate(histories):
        seen[i, h] = True
    finite = [np.where(np.isfinite(s), s, -1e30).astype(np.float32) for s in member_scores]

    def ndcg(w: np.ndarray) -> float:
        blend = sum(float(wi) * s for wi, s in zip(w, finite, strict=True) if wi > 0)
        return summarize(ranks_from_scores(blend, targets, seen))["NDCG@10"]

    alone = [ndcg(np.eye(len(finite))[i]) for i in range(len(finite))]
    w = np.eye(len(finite))[int(np.argmax(alone))]
    best = max(alone)
    for _ in range(rounds):
        improved = False
        for i in range(len(finite)):
            for v in WEIGHT_GRID:
                if v == w[i]:
                    continue
                trial = w.copy()
                trial[i] = v
                if not trial.any():
                    continue
                score = ndcg(trial)
                if score > best + 1e-12:
                    w, best, improved = trial, score, True
        if not improved:
            break
    figures = {f"member{i}_ndcg10": a for i, a in enumerate(alone)}
    return w / w.sum(), {"valid_ndcg10": best, **figures}


def train(dataset: Dataset, train_sequences: list[np.ndarray], out_dir: Path,
          options: dict[str, Any], resume: bool = False) -> None:
    """Train (or reuse) every member, choose the blend weights on validation users."""
    from dcrec.cloud.models import backends

    opts = _options(options)
    out_dir = Path(out_dir)
    trimmed, v_hist, v_tgt = holdout_valid(train_sequences, int(opts["valid_users"]), int(opts["seed"]))
    data_key = _data_key(train_sequences, dataset.n_items)
    member_dirs = []
    for i, member in enumerate(opts["members"]):
        name, mopts = member["backend"], _member_options(member, opts)
        mdir = out_dir / "members" / f"{i}-{name}"
        # textrec members hold out the validation users themselves; any other backend is
        # given the sequences without those users' newest items.
        seqs = train_sequences if name == "textrec" else trimmed
        sig = {"backend": name, "options": mopts, "data": data_key}
        sig_path = mdir / "member.json"
        if sig_path.is_file() and json.loads(sig_path.read_text()) == sig and (mdir / "backend.json").is_file():
            log.info("ensemble: member %d (%s) already trained in %s", i, name, mdir)
        else:
            log.info("ensemble: training member %d (%s) %s", i, name, mopts)
            backends.train(name, dataset, seqs, mdir, mopts, resume=resume)
            write_atomic(sig_path, json.dumps(sig, indent=2))
        member_dirs.append(mdir)

    gens = [backends.load_generator(d) for d in member_dirs]
    scores = [np.concatenate([member_score(g, v_hist[s : s + SCORE_BATCH])
                              for s in range(0, len(v_hist), SCORE_BATCH)]) for g in gens]
    weights, figures = choose_weights(scores, v_hist, v_tgt, int(opts["weight_rounds"]))
    log.info("ensemble: weights %s, validation NDCG@10 %.4f (members %s)", weights.round(2).tolist(),
             figures["valid_ndcg10"], [round(figures[f"member{i}_ndcg10"], 4) for i in range(len(gens))])
    meta = {"members": [{"dir": str(d.relative_to(out_dir)), "backend": g.name, "version": g.version}
                        for d, g in zip(member_dirs, gens, strict=True)],
            "weights": weights.tolist(), "validation_users": len(v_tgt), **figures,
            "options": {k: v for k, v in opts.items() if k != "members"}}
    write_atomic(out_dir / "ensemble.json", json.dumps(meta, indent=2))
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    write_manifest(out_dir, NAME, version=f"{NAME}-{digest}", valid_ndcg10=figures["valid_ndcg10"])


class EnsembleGenerator:
    """Serves the weighted sum of its members' log-probabilities as a :class:`CandidateGenerator`."""

    name = NAME

    def __init__(self, members: list[Any], weights: np.ndarray, version: str) -> None:
        if len(members) != len(weights):
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        n = {m.n_items for m in members}
        if len(n) != 1:
            raise ValueError(f"ensemble members disagree on the catalogue size: {sorted(n)}")
        keep = [i for i, w in enumerate(weights) if w > 0]
        self.members = [members[i] for i in keep]  # a zero weight costs nothing at serving time
        self.weights = np.asarray([weights[i] for i in keep], dtype=np.float64)
        self.version = version
        self.n_items = n.pop()

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, N+1) float32 blended scores; column 0 is -inf."""
        blend = sum(w * member_score(m, histories) for w, m in zip(self.weights, self.members, strict=True))
        out = np.asarray(blend, dtype=np.float32)
        out[:, 0] = -np.inf
        return out

    def generate(self, histories: Sequence[np.ndarray], count: int,
                 exclude_seen: bool = True) -> list[CandidateList]:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        histories = checked_histories(histories, self.n_items)
        if not histories:
            return []
        scores = self.score(histories)
        if exclude_seen:
            for i, h in enumerate(histories):
                scores[i, h] = -np.inf
        items, vals = top_k(scores, min(count, self.n_items))
        out = []
        for it, v in zip(items, vals, strict=True):
            keep = np.isfinite(v)  # padding and excluded items score -inf
            out.append(CandidateList(it[keep].astype(np.int64), v[keep].astype(np.float32)))
        return out


def load_generator(model_dir: Path) -> EnsembleGenerator:
    from dcrec.cloud.models import backends

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "ensemble.json").read_text())
    members = [backends.load_generator(model_dir / m["dir"]) for m in meta["members"]]
    return EnsembleGenerator(members, np.asarray(meta["weights"]), str(read_manifest(model_dir)["version"]))
