import numpy as np
import pytest

from dcrec.shared.agreement import disagreement, footrule, kendall_tau, rank_biased_overlap


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
    from dcrec.shared.agreement import coverage_gap

    cloud = np.array([1, 2, 3, 4])
    assert coverage_gap(np.array([2, 3]), cloud) == 0.0
    assert coverage_gap(np.array([2, 9]), cloud) == pytest.approx(0.5)
    assert coverage_gap(np.array([8, 9]), cloud) == 1.0
    assert disagreement(cloud, np.array([9, 1]), "coverage") == pytest.approx(0.5)


def test_expected_regret_is_zero_for_the_device_favourites_in_order() -> None:
    from dcrec.shared.agreement import expected_regret

    p = np.array([0.0, 0.5, 0.3, 0.1, 0.1])
    assert expected_regret(p, np.array([1, 2, 3]), k=3) == pytest.approx(0.0)
    # The same items in another order lose a little; missing the favourite loses more.
    swapped = expected_regret(p, np.array([2, 1, 3]), k=3)
    missing = expected_regret(p, np.array([3, 4, 2]), k=3)
    assert 0.0 < swapped < missing <= 1.0
    # By hand: best 0.5/1 + 0.3/log2(3) + 0.1/2; shown [3, 4, 2] gets 0.1 + 0.1/log2(3) + 0.3/2.
    best = 0.5 + 0.3 / np.log2(3) + 0.1 / 2
    got = 0.1 + 0.1 / np.log2(3) + 0.3 / 2
    assert missing == pytest.approx(best - got)


def test_expected_regret_grows_with_the_device_confidence() -> None:
    from dcrec.shared.agreement import expected_regret, softmax

    shown = np.array([5, 6, 7])
    sure = softmax(np.array([-np.inf, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    unsure = softmax(np.array([-np.inf, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert sure[0] == 0.0 and sure.sum() == pytest.approx(1.0)
    assert expected_regret(sure, shown, 3) > expected_regret(unsure, shown, 3) > 0.0
    # Padding (0) and ids outside the catalogue in the shown list are ignored, not an error.
    best = sure[1] + sure[2] / np.log2(3) + sure[3] / 2
    assert expected_regret(sure, np.array([0, 99, 1]), 3) == pytest.approx(best - sure[1] / 2)
    with pytest.raises(ValueError, match="k must be"):
        expected_regret(sure, shown, 0)


def test_uncovered_mass_is_the_probability_outside_the_list() -> None:
    from dcrec.shared.agreement import uncovered_mass

    p = np.array([0.0, 0.5, 0.3, 0.1, 0.1])
    assert uncovered_mass(p, np.array([1, 2, 3, 4])) == pytest.approx(0.0)
    assert uncovered_mass(p, np.array([2, 4])) == pytest.approx(0.6)
    # Duplicates, padding and unknown ids count once or not at all.
    assert uncovered_mass(p, np.array([2, 2, 0, 77, 4])) == pytest.approx(0.6)
    assert uncovered_mass(p, np.array([], dtype=np.int64)) == pytest.approx(1.0)
    # The less likely the device finds what the list holds, the larger the score.
    assert uncovered_mass(p, np.array([3])) > uncovered_mass(p, np.array([1]))
