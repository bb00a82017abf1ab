"""The estimators against hand-computed values and brute-force enumeration."""

import itertools
import math

import pytest

from tirl.eval.metrics import (Estimate, avg_at_k, bootstrap_mean, majority_vote_score,
                               normalize_answer, paired_bootstrap, pass_at_k, pass_k_levels,
                               per_problem_pass_at_k)


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),          # c/n
        (5, 2, 2, 1 - 3 / 10),   # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),   # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),          # n-c < k: some correct sample is always drawn
        (4, 1, 2, 0.5),          # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (16, 0, 16, 0.0),
        (16, 1, 16, 1.0),
        (16, 4, 1, 0.25),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_enumeration_over_subsets():
    # pass@k = P(a uniformly random k-subset of the n samples contains a correct one)
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hit = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(hit, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_does_not_overflow():
    assert 0.0 < pass_at_k(1024, 3, 10) < 1.0
    assert pass_at_k(1024, 3, 10) == pytest.approx(1 - math.comb(1021, 10) / math.comb(1024, 10))


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 5), (4, 2, 0)])
def test_pass_at_k_rejects_bad_arguments_naming_them(n, c, k):
    with pytest.raises(ValueError) as err:
        pass_at_k(n, c, k)
    assert str(n) in str(err.value)


def test_avg_at_k_is_mean_of_per_problem_fractions():
    # problem 1: 3/4, problem 2: 0/4, problem 3: 1/2 (fewer samples weigh the same)
    rows = [[1, 1, 1, 0], [0, 0, 0, 0], [1, 0]]
    assert avg_at_k(rows) == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert per_problem_pass_at_k(rows, 1) == pytest.approx([0.75, 0.0, 0.5])
    assert math.isnan(avg_at_k([]))
    with pytest.raises(ValueError, match="no samples"):
        avg_at_k([[1], []])


def test_majority_vote_cases():
    # the correct class wins 2 to 1; the missing answer does not vote
    assert majority_vote_score(["3", "3", "5", None], [True, True, False, False]) == 1.0
    # a wrong answer wins 2 to 1
    assert majority_vote_score(["5", "5", "3", None], [False, False, True, False]) == 0.0
    # a 2-way tie that includes the correct class: expected value of a random tie-break
    assert majority_vote_score(["3", "5"], [True, False]) == 0.5
    # a 3-way tie
    assert majority_vote_score(["1", "2", "3"], [False, True, False]) == pytest.approx(1 / 3)
    # a tie between two wrong classes, correct class smaller
    assert majority_vote_score(["1", "1", "2", "2", "3"], [False, False, False, False, True]) == 0.0
    # nobody voted
    assert majority_vote_score([None, None], [False, False]) == 0.0
    # correct answers in different spellings are one class (they all equal the reference)
    assert majority_vote_score(["1/2", "0.5", "7", "8"], [True, True, False, False]) == 1.0
    # wrong answers in trivially different spellings are grouped too
    assert majority_vote_score(["42", "\\dfrac{1}{2}", " \\frac{1}{2} "], [True, False, False]) == 0.0


def test_normalize_answer():
    assert normalize_answer(" $\\left( 3, \\frac{\\pi}{2} \\right)$ ") == "(3,\\frac{\\pi}{2})"
    assert normalize_answer("\\dfrac{1}{2}.") == "\\frac{1}{2}"


def test_bootstrap_is_seeded_and_brackets_the_mean():
    vals = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0] * 3
    a = bootstrap_mean(vals, 500, seed=7)
    b = bootstrap_mean(vals, 500, seed=7)
    assert a == b
    assert a.lo <= a.value <= a.hi
    assert a.value == pytest.approx(0.6)
    assert 0.3 < a.lo < 0.6 < a.hi < 0.85


def test_bootstrap_hand_cases():
    # a constant sample has a zero-width interval
    assert bootstrap_mean([0.25] * 9, 200, seed=1) == Estimate(0.25, 0.25, 0.25)
    # two values: resampled means are 0, .5, 1 with prob 1/4, 1/2, 1/4 -> 2.5%..97.5% = 0..1
    e = bootstrap_mean([0.0, 1.0], 2000, seed=3)
    assert (e.value, e.lo, e.hi) == (0.5, 0.0, 1.0)
    assert bootstrap_mean([0.5, 1.0], 0) == Estimate(0.75)
    assert math.isnan(bootstrap_mean([], 100).value)
    assert Estimate(0.725, 0.65, 0.8).fmt() == "72.5 [65.0, 80.0]"


def test_paired_bootstrap():
    a = [1.0, 0.0, 0.5, 1.0]
    same = paired_bootstrap(a, a, 300, seed=0)
    assert (same.diff, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_bootstrap([x + 0.1 for x in a], a, 300, seed=0)
    assert shifted.diff == pytest.approx(0.1)
    assert shifted.lo == pytest.approx(0.1) and shifted.hi == pytest.approx(0.1)
    assert shifted.p_value == 0.0
    # pairing matters: b is a permuted, so unpaired means are equal but per-problem diffs are not
    b = [0.0, 1.0, 1.0, 0.5]
    d = paired_bootstrap(a, b, 1000, seed=0)
    assert d.diff == pytest.approx(0.0)
    assert d.lo < 0 < d.hi
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_pass_k_levels():
    assert pass_k_levels(1) == [1]
    assert pass_k_levels(16) == [1, 2, 4, 8, 16]
    assert pass_k_levels(12) == [1, 2, 4, 8, 12]
