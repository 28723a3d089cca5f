"""Constrained beam search: a causal LM writes catalogue titles, and only those.

Several users' prompts are prefilled in one left-padded batch; then every
step runs one forward pass over all live beams of all users at once (one new
token per beam on the KV cache; see :mod:`dcrec.cloud.models.llm.runner`). A beam may only take the tokens its prefix-tree node
allows (:mod:`dcrec.cloud.models.llm.trie`), so every finished beam is a catalogue title,
and a beam that reaches a terminal yields that terminal's item ids.

Scores are log-probabilities, in one of two ways:

* ``"catalogue"``: at each step the model's distribution is renormalised
  over the tokens the catalogue allows, so the scores of all titles form one
  distribution over the catalogue. A token that is the only choice costs
  nothing, so a beam stops as soon as its prefix names a single title: most
  titles are told apart after a few tokens, which saves most of the steps.
* ``"model"``: the model's own log-probability of the title tokens and the
  end token, optionally divided by ``n_tokens ** length_penalty``.

Logits are computed only for the tokens some beam may take (a gather of the
output-embedding rows), except in ``"model"`` scoring, which needs the full
softmax denominator.

Example::

    runner = make_runner(model, pad_id=tok.pad_token_id)
    [hits] = beam_search(runner, trie, [prompt_ids], count=20,
                         exclusions=[trie.exclusion(history)], config=BeamConfig())
    hits[:3]   # [(item_id, log_prob), ...] best first
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dcrec.cloud.models.llm.runner import LMRunner
from dcrec.cloud.models.llm.trie import ROOT, Exclusion, TitleTrie

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BeamConfig:
    beam_width: int = 20  # live prefixes per user; each costs one token of compute per step
    scoring: str = "catalogue"  # "catalogue" (renormalised over allowed tokens) or "model" (raw log-prob)
    length_penalty: float = 0.0  # "model" scoring only: score / n_tokens**p, so long titles are not punished

    def validate(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.scoring not in ("catalogue", "model"):
            raise ValueError(f"scoring must be 'catalogue' or 'model', got {self.scoring!r}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")
        if self.length_penalty and self.scoring != "model":
            raise ValueError("length_penalty applies to scoring='model' only")


@dataclass
class _Finished:
    """One user's finished beams: (score, terminal) pairs and the items they hold."""

    scores: list[float]
    terminals: list[int]
    n_items: int = 0

    def threshold(self, trie: TitleTrie, exclusion: Exclusion, count: int) -> float:
        """Score of the ``count``-th best finished item, -inf while there are fewer."""
        if self.n_items < count:
            return -np.inf
        got = 0
        for s, t in sorted(zip(self.scores, self.terminals, strict=True), reverse=True):
            got += len(trie.items_at(t, exclusion))
            if got >= count:
                return s
        return -np.inf


def _children(trie: TitleTrie, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened children of ``nodes`` (R,): (row (F,), edge index (F,))."""
    a, b = trie.child_ptr[nodes], trie.child_ptr[nodes + 1]
    lens = b - a
    rows = np.repeat(np.arange(len(nodes)), lens)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    edges = np.arange(int(lens.sum())) - starts + np.repeat(a, lens)
    return rows, edges


def _segment_logsumexp(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(n_rows,) log-sum-exp of ``values`` (F,) grouped by ``rows`` (F,); 0 for empty rows."""
    top = torch.full((n_rows,), -torch.inf, dtype=values.dtype)
    top = top.scatter_reduce(0, rows, values, reduce="amax", include_self=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = torch.zeros(n_rows, dtype=values.dtype).index_add_(0, rows, torch.exp(values - top[rows]))
    return top + torch.log(sums.clamp(min=torch.finfo(values.dtype).tiny))


def beam_search(
    runner: LMRunner,
    trie: TitleTrie,
    prompts: Sequence[Sequence[int]],
    count: int,
    exclusions: Sequence[Exclusion],
    config: BeamConfig,
    shared_prefix: int = 0,
) -> list[list[tuple[int, float]]]:
    """Top ``count`` catalogue items for each of B prompts, as (item id, score) best first.

    ``exclusions[b]`` closes the items user ``b`` may not get. A user may get
    fewer than ``count`` items (a narrow beam, or a tiny open catalogue); the
    caller fills the rest. Ties break by item id, so results are deterministic.
    ``shared_prefix``: leading tokens common to every prompt (see ``LMRunner.start``).
    """
    config.validate()
    n_users = len(prompts)
    if n_users == 0:
        return []
    if len(exclusions) != n_users:
        raise ValueError(f"{len(exclusions)} exclusions for {n_users} prompts")
    catalogue = config.scoring == "catalogue"
    prune = config.length_penalty == 0.0  # log-probs only fall along a path: a beam below the count-th item is done
    width = config.beam_width
    n_nodes = trie.n_nodes
    closed = np.array(sorted(
        u * n_nodes + n for u, ex in enumerate(exclusions)
        for n, c in ex.blocked_below.items() if c >= trie.terminals_below[n]
    ), dtype=np.int64)
    finished = [_Finished([], []) for _ in range(n_users)]

    hidden, state = runner.start(prompts, shared_prefix)
    user = np.arange(n_users)
    node = np.full(n_users, ROOT, dtype=np.int64)
    score = np.zeros(n_users)
    n_tok = np.zeros(n_users, dtype=np.int64)

    for _ in range(trie.max_depth + 1):
        rows, edges = _children(trie, node)
        tok, kid = trie.child_tok[edges], trie.child_node[edges]
        if closed.size:
            keep = ~np.isin(user[rows] * n_nodes + kid, closed)
            rows, tok, kid = rows[keep], tok[keep], kid[keep]
        if rows.size == 0:
            break
        union, col = np.unique(tok, return_inverse=True)
        rows_t = torch.from_numpy(rows)
        with torch.inference_mode():
            vals = runner.logits(hidden, torch.from_numpy(union))[rows_t, torch.from_numpy(col)].double()
            if catalogue:
                norm = _segment_logsumexp(vals, rows_t, len(node))
            else:
                norm = torch.logsumexp(runner.logits(hidden).double(), dim=1)
            lp = (vals - norm[rows_t]).numpy()
        cand = score[rows] + lp
        cand_tok = n_tok[rows] + 1
        term = np.where(tok == trie.end_token, kid, -1)
        if catalogue:
            term = np.where(term < 0, trie.sole_terminal[kid], term)
            for j in np.nonzero(term < 0)[0]:  # partly excluded subtrees resolve per user
                ex = exclusions[user[rows[j]]]
                if int(kid[j]) in ex.blocked_below:
                    term[j] = trie.resolve(int(kid[j]), ex)

        order = np.lexsort((rows, tok, -cand, user[rows]))
        keep_rows: list[int] = []
        keep_j: list[int] = []
        bounds = np.searchsorted(user[rows][order], np.arange(n_users + 1))
        for u in range(n_users):
            seg = order[bounds[u] : bounds[u + 1]]
            if seg.size == 0:
                continue
            fin, ex = finished[u], exclusions[u]
            floor = fin.threshold(trie, ex, count) if prune else -np.inf
            live = 0
            for j in seg:
                if cand[j] <= floor:
                    break  # sorted: nothing after this can enter the top ``count``
                if term[j] >= 0:
                    final = cand[j] / (cand_tok[j] ** config.length_penalty) if config.length_penalty else cand[j]
                    n_new = len(trie.items_at(int(term[j]), ex))
                    if n_new:
                        fin.scores.append(float(final))
                        fin.terminals.append(int(term[j]))
                        fin.n_items += n_new
                        if prune:
                            floor = fin.threshold(trie, ex, count)
                elif live < width:
                    keep_rows.append(int(rows[j]))
                    keep_j.append(int(j))
                    live += 1
                else:
                    break
        if not keep_j:
            break
        src = np.asarray(keep_rows, dtype=np.int64)
        j_arr = np.asarray(keep_j, dtype=np.int64)
        user, node, score, n_tok = user[src], kid[j_arr], cand[j_arr], cand_tok[j_arr]
        hidden = runner.advance(state, torch.from_numpy(src), torch.from_numpy(tok[j_arr]))

    results: list[list[tuple[int, float]]] = []
    for u in range(n_users):
        fin = finished[u]
        ranked = sorted(zip(fin.scores, fin.terminals, strict=True),
                        key=lambda st: (-st[0], trie.items_at(st[1])[0]))
        hits: list[tuple[int, float]] = []
        for s, t in ranked:
            hits += [(i, s) for i in trie.items_at(t, exclusions[u])]
            if len(hits) >= count:
                break
        results.append(hits[:count])
    return results
