import math

import numpy as np
import pytest

from dcrec.shared.metrics import (
    MISS,
    hit_rate,
    mrr,
    ndcg,
    ranks_from_scores,
    ranks_in_lists,
    summarize,
)


def test_hand_computed_ranks_and_metrics() -> None:
    ranks = np.array([0, 1, 4, 9, MISS])
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert hit_rate(ranks, 5) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 10) == pytest.approx(4 / 5)
    expected_ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5
    assert ndcg(ranks, 5) == pytest.approx(expected_ndcg5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 5)
    assert mrr(ranks, 3) == pytest.approx((1 + 1 / 2) / 5)


def test_ranks_from_scores_ignores_padding_and_counts_ties_against_target() -> None:
    scores = np.array([[9.0, 0.1, 0.5, 0.3], [0.0, 1.0, 1.0, 1.0]])
    ranks = ranks_from_scores(scores, np.array([3, 2]))
    assert ranks.tolist() == [1, 2]  # padding column 0 never counts; ties are pessimistic


def test_ranks_from_scores_excludes_seen_but_never_the_target() -> None:
    scores = np.array([[0.0, 0.9, 0.8, 0.1]])
    exclude = np.array([[False, True, False, True]])
    assert ranks_from_scores(scores, np.array([3]), exclude).tolist() == [1]
    assert ranks_from_scores(scores, np.array([2]), exclude).tolist() == [0]


def test_ranks_in_lists_marks_misses() -> None:
    lists = np.array([[5, 3, 9], [1, 2, 4], [7, 0, 0]])
    assert ranks_in_lists(lists, np.array([9, 8, 7])).tolist() == [2, MISS, 0]


def test_summarize_is_bounded_and_keyed() -> None:
    out = summarize(np.array([0, 3, 30, MISS]))
    assert set(out) == {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert out["HR@5"] == pytest.approx(0.5) and out["HR@20"] == pytest.approx(0.5)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        ranks_from_scores(np.zeros((2, 3)), np.array([1]))
