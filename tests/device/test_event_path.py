"""The fast event path computes what the straightforward one did, to the bit where it can.

Each shortcut is checked against the plain numpy it replaced: the quantile threshold
against ``np.quantile``, the regret from scores against ``expected_regret(softmax(...))``,
id membership against ``np.isin``, the neighbour index's dense vote sums against summing
per unique id, and the reranker's one-pass scoring (``user`` output times the item table)
against ONNX Runtime scoring every candidate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcrec.device.budget import QuantileTracker
from dcrec.device.fusion import member
from dcrec.device.reranker import OnnxReranker
from dcrec.shared.agreement import expected_regret, regret_of_scores, softmax
from dcrec.shared.neighbours import NeighbourIndex

scores_st = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(target=st.floats(0.01, 0.99), window=st.integers(1, 60), prior_weight=st.integers(0, 3),
       stream=st.lists(st.one_of(scores_st, st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=150))
def test_quantile_threshold_is_numpys_bit_for_bit(target: float, window: int, prior_weight: int,
                                                  stream: list[float]) -> None:
    tracker = QuantileTracker(target, 0.37, window, prior_weight)
    recent: list[float] = []
    for x in stream:
        tracker.update(x)
        recent = (recent + [x])[-window:]
        pseudo = [0.37] * (prior_weight if len(recent) < window else 0)
        assert tracker.threshold == float(np.quantile(np.array(recent + pseudo), 1.0 - target))


def test_quantile_threshold_survives_nan_and_a_reload() -> None:
    a = QuantileTracker(0.1, 0.5, 5)
    for x in [0.2, float("nan"), 0.4, 0.9, 0.1, 0.3, 0.6, 0.7]:
        a.update(x)
    b = QuantileTracker(0.1, 0.5, 5)
    b.load_state(a.state())
    for x in [0.25, 0.8, 0.05]:
        a.update(x)
        b.update(x)
        assert a.threshold == b.threshold == float(np.quantile(np.array(list(a.recent)), 0.9))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(2, 200), k=st.integers(1, 15),
       temperature=st.floats(0.2, 5.0))
def test_regret_from_scores_is_regret_of_the_softmax(data: st.DataObject, n: int, k: int,
                                                     temperature: float) -> None:
    raw = data.draw(st.lists(st.floats(-20, 20), min_size=n, max_size=n))
    s = np.round(np.array(raw), data.draw(st.integers(0, 3)))  # ties too
    masked = data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1))
    s[masked] = -np.inf
    s[0] = -np.inf
    if not np.isfinite(s).any():
        s[n - 1] = 0.0
    shown = np.array(data.draw(st.lists(st.integers(0, n + 2), max_size=12)), dtype=np.int64)
    want = expected_regret(softmax(s, temperature), shown, k)
    assert regret_of_scores(s, temperature, shown, k) == want
    kk = min(k, n)
    top = np.argpartition(-s, kk - 1)[:kk] if kk < n else np.arange(n)
    assert regret_of_scores(s, temperature, shown, k, top) == want


@settings(max_examples=300, deadline=None)
@given(a=st.lists(st.integers(0, 60), max_size=40), b=st.lists(st.integers(0, 60), max_size=40))
def test_member_is_isin(a: list[int], b: list[int]) -> None:
    assert np.array_equal(member(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)),
                          np.isin(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)))


def _votes_by_unique(index: NeighbourIndex, history: np.ndarray, count: int, recent: int, decay: float,
                     exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """The local list computed by summing per unique id (what the index did before)."""
    h = np.asarray(history, dtype=np.int64)[-recent:][::-1]
    h = h[(h > 0) & (h <= index.n_items)]
    if h.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    weights = decay ** np.arange(h.size, dtype=np.float64)
    cand = index.items[h].ravel()
    votes = (index.scores[h].astype(np.float64) * weights[:, None]).ravel()
    live = cand > 0
    ids, inv = np.unique(cand[live], return_inverse=True)
    sums = np.bincount(inv, weights=votes[live])
    keep = np.array([i not in exclude for i in ids.tolist()], dtype=bool)
    ids, sums = ids[keep], sums[keep]
    order = np.lexsort((ids, -sums))[:count]
    return ids[order].astype(np.int64), sums[order].astype(np.float32)


def test_local_list_with_dense_votes_and_a_mask_matches_per_id_sums() -> None:
    rng = np.random.default_rng(3)
    n, k = 400, 30
    items = np.zeros((n + 1, k), dtype=np.int64)
    scores = np.zeros((n + 1, k))
    for row in range(1, n + 1):
        m = int(rng.integers(0, k + 1))
        items[row, :m] = rng.choice(np.arange(1, n + 1), size=m, replace=False)
        scores[row, :m] = np.sort(np.round(rng.random(m), 2))[::-1]
    index = NeighbourIndex.from_lists(items, scores, "c")
    for _ in range(300):
        history = rng.integers(0, n + 5, int(rng.integers(0, 40)))
        exclude = set(rng.integers(1, n + 1, int(rng.integers(0, 120))).tolist())
        count, recent, decay = int(rng.integers(1, 80)), int(rng.integers(1, 12)), float(rng.uniform(0.2, 1))
        want = _votes_by_unique(index, history, count, recent, decay, exclude)
        mask = np.zeros(n + 1, dtype=bool)
        mask[list(exclude)] = True
        for ex in (exclude, mask):
            got = index.local_list(history, count, recent, decay, ex)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="n_items \\+ 1"):
        index.local_list(np.array([3]), 5, exclude=np.zeros(n, dtype=bool))


def test_one_pass_scoring_matches_onnx_runtime_on_every_candidate(device_model_dir: Path) -> None:
    fast = OnnxReranker.from_file(device_model_dir / "model.onnx", 50, n_items=1682)
    slow = OnnxReranker.from_file(device_model_dir / "model.onnx", 50, n_items=1682)
    slow._table = None  # the path a release without the ``user`` output takes
    assert fast.fast and not slow.fast
    rng = np.random.default_rng(0)
    for length in (0, 1, 7, 50, 80):
        history = rng.integers(1, 1683, length)
        cand = rng.integers(1, 1683, 150)
        a, b = fast.score(history, cand), slow.score(history, cand)
        assert np.abs(a - b).max() < 1e-5
        # the same order, up to scores within float32 rounding of each other (which order two
        # such items take depends on the CPU's summation order)
        assert (np.diff(b[np.argsort(-a, kind="stable")]) <= 1e-6).all()
        ca, cb = fast.score_catalogue(history), slow.score_catalogue(history)
        assert ca[0] == cb[0] == -np.inf and np.abs(ca[1:] - cb[1:]).max() < 1e-5
        # after the catalogue pass, candidate scores are read from it: the two agree exactly
        assert np.array_equal(fast.score(history, cand), ca[cand])
        sa, ea = fast.score_with_embeddings(history, cand)
        sb, eb = slow.score_with_embeddings(history, cand)
        assert np.array_equal(ea, eb) and np.abs(sa - sb).max() < 1e-5
