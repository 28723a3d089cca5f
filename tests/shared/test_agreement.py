import numpy as np
import pytest

from shared.agreement import disagreement, footrule, kendall_tau, rank_biased_overlap


def test_footrule_hand_computed() -> None:
    a = np.array([10, 20, 30, 40])
    assert footrule(a, a) == 0.0
    assert footrule(a, a[::-1]) == pytest.approx(1.0)  # 3+1+1+3 = 8 = floor(16/2)
    assert footrule(a, np.array([20, 10, 30, 40])) == pytest.approx(2 / 8)


def test_kendall_hand_computed() -> None:
    a = np.array([1, 2, 3])
    assert kendall_tau(a, a) == 1.0
    assert kendall_tau(a, a[::-1]) == -1.0
    assert kendall_tau(a, np.array([2, 1, 3])) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant


def test_rbo_identical_disjoint_and_top_weighted() -> None:
    a = np.array([1, 2, 3, 4, 5])
    assert rank_biased_overlap(a, a) == pytest.approx(1.0)
    assert rank_biased_overlap(a, np.array([6, 7, 8, 9, 10])) == 0.0
    swap_top = rank_biased_overlap(a, np.array([2, 1, 3, 4, 5]))
    swap_bottom = rank_biased_overlap(a, np.array([1, 2, 3, 5, 4]))
    assert swap_top < swap_bottom < 1.0


def test_rbo_hand_computed_depth_two() -> None:
    # depth 1: overlap 0/1; depth 2: overlap 2/2. weights 1 and p.
    p = 0.5
    got = rank_biased_overlap(np.array([1, 2]), np.array([2, 1]), p=p)
    assert got == pytest.approx((0 + p * 1.0) / (1 + p))


def test_rankings_of_different_items_are_rejected() -> None:
    with pytest.raises(ValueError):
        footrule(np.array([1, 2, 3]), np.array([1, 2, 4]))
    with pytest.raises(ValueError):
        disagreement(np.array([1]), np.array([1]), measure="nope")  # type: ignore[arg-type]


@pytest.mark.parametrize("measure", ["footrule", "kendall", "rbo"])
def test_disagreement_bounds(measure: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.permutation(50) + 1
    for _ in range(20):
        b = rng.permutation(a)
        d = disagreement(a, b, measure)  # type: ignore[arg-type]
        assert 0.0 <= d <= 1.0
    assert disagreement(a, a, measure) == pytest.approx(0.0)  # type: ignore[arg-type]


def test_coverage_gap() -> None:
    from shared.agreement import coverage_gap

    cloud = np.array([1, 2, 3, 4])
    assert coverage_gap(np.array([2, 3]), cloud) == 0.0
    assert coverage_gap(np.array([2, 9]), cloud) == pytest.approx(0.5)
    assert coverage_gap(np.array([8, 9]), cloud) == 1.0
    assert disagreement(cloud, np.array([9, 1]), "coverage") == pytest.approx(0.5)
