"""Spellings of the same answer that must be judged equal (false negatives), each class with
near misses that must stay unequal, and the rule for several boxes in the final answer."""

from fractions import Fraction

import pytest

from tirl.reward import grade, is_equivalent
from tirl.reward.normalize import canonical_symbols, fast_equal, inequality_as_interval, repeating_value

SAME = [
    # Euler's number, upright or italic
    ("euler", r"\mathrm{e}", "e"),
    ("euler", r"e^{2}", r"\mathrm{e}^2"),
    ("euler", r"\mathrm{e}^{2}", r"e^2"),
    ("euler", r"1 + \frac{1}{\mathrm{e}}", r"1 + \frac{1}{e}"),
    ("euler", r"\frac{1}{\mathrm{e}}", r"e^{-1}"),
    ("euler", r"\operatorname{e}^{x}", r"e^x"),
    # repeating decimals
    ("repeating", r"0.\overline{3}", r"\frac{1}{3}"),
    ("repeating", r"0.1\overline{6}", r"\frac{1}{6}"),
    ("repeating", r"0.\overline{142857}", r"\frac{1}{7}"),
    ("repeating", r"1.\overline{9}", "2"),
    ("repeating", r"-0.\overline{6}", r"-\frac{2}{3}"),
    ("repeating", r"0.\overline{09}", r"\frac{1}{11}"),
    ("repeating", r"2.5\overline{0}", r"\frac{5}{2}"),
    # Unicode symbols
    ("unicode", "∞", r"\infty"),
    ("unicode", "-∞", r"-\infty"),
    ("unicode", "∅", r"\varnothing"),
    ("unicode", "∅", r"\emptyset"),
    ("unicode", r"\varnothing", r"\emptyset"),
    ("unicode", "π/2", r"\frac{\pi}{2}"),
    ("unicode", "2π", r"2\pi"),
    ("unicode", "√2", r"\sqrt{2}"),
    ("unicode", "3√12", r"6\sqrt{3}"),
    ("unicode", "√(x+1)", r"\sqrt{x+1}"),
    ("unicode", "−5", "-5"),
    ("unicode", "2×3", "6"),
    ("unicode", "x ≤ 3", r"x \le 3"),
    ("unicode", "x ≥ 3", r"x \geq 3"),
    ("unicode", "(−∞, 3]", r"(-\infty, 3]"),
    ("unicode", "6·7", "42"),
    # inequalities vs intervals
    ("inequality", r"1 \le x \le 3", "[1,3]"),
    ("inequality", r"1 \leq x < 3", "[1,3)"),
    ("inequality", "x > 2", r"(2, \infty)"),
    ("inequality", r"x \geq -1", r"[-1, \infty)"),
    ("inequality", "x < 5", r"(-\infty, 5)"),
    ("inequality", r"x \le \frac{1}{2}", r"(-\infty, \frac12]"),
    ("inequality", r"3 \ge x \ge 1", "[1, 3]"),
    ("inequality", "2 < x", r"(2,\infty)"),
    ("inequality", "[1,3]", r"1 \le x \le 3"),
    ("inequality", "1 ≤ x ≤ 3", "[1,3]"),
    # percentages of fractions (the percentage rules: p% equals p and p/100)
    ("percent", r"\frac{1}{2}\%", "0.005"),
    ("percent", r"\frac{1}{2}\%", r"\frac{1}{200}"),
    ("percent", r"\frac{1}{2}\%", r"\frac12"),
    ("percent", r"\frac{50}{3}\%", r"\frac{1}{6}"),
    # trailing punctuation inside the box
    ("punctuation", r"\frac{1}{3},", r"\frac13"),
    ("punctuation", "5.", "5"),
    ("punctuation", "5;", "5"),
    ("punctuation", r"\sqrt{2}.", r"\sqrt{2}"),
    ("punctuation", r"\ln 2,", r"\ln 2"),
]

NEAR_MISSES = [
    (r"\mathrm{e}", r"\pi"),
    (r"e^{2}", r"\mathrm{e}^3"),
    (r"0.\overline{3}", r"\frac{3}{10}"),
    (r"0.1\overline{6}", r"\frac{1}{7}"),
    (r"0.\overline{9}", "0.9"),
    ("∞", "1000000"),
    ("∅", r"\{0\}"),
    ("√2", r"\sqrt{3}"),
    ("−5", "5"),
    ("2×3", "5"),
    (r"1 \le x \le 3", "(1,3]"),
    ("x > 2", r"[2,\infty)"),
    ("x > 2", r"(-\infty, 2)"),
    (r"x \ge 2", r"(2,\infty)"),
    (r"\frac{1}{2}\%", "0.05"),
    (r"\frac{1}{3},", r"\frac14"),
    ("5.", "6"),
]


@pytest.mark.parametrize("kind,pred,gold", SAME, ids=[f"{k}:{p}|{g}" for k, p, g in SAME])
def test_same_answer_spelled_differently(kind, pred, gold):
    assert is_equivalent(pred, gold, timeout_s=10.0) is True
    assert is_equivalent(gold, pred, timeout_s=10.0) is True


@pytest.mark.parametrize("pred,gold", NEAR_MISSES)
def test_near_misses_stay_unequal(pred, gold):
    assert is_equivalent(pred, gold, timeout_s=10.0) is False
    assert is_equivalent(gold, pred, timeout_s=10.0) is False


def test_numeric_spellings_are_decided_on_the_fast_path():
    assert fast_equal(r"0.\overline{3}", r"\frac13") is True
    assert fast_equal(r"0.1\overline{6}", "1/6") is True
    assert fast_equal("√12", r"2\sqrt{3}") is True
    assert fast_equal(r"\frac{1}{2}\%", "0.005") is True
    assert fast_equal(r"\frac{1}{3},", r"\frac13") is True
    assert fast_equal(r"1 \le x \le 3", "[1,3]") is True
    assert fast_equal("−5", "-5") is True


def test_repeating_value_by_hand():
    # 0.1(6): 16 - 1 = 15 over 90
    assert repeating_value("0", "1", "6") == Fraction(1, 6)
    assert repeating_value("0", "", "3") == Fraction(1, 3)
    assert repeating_value("12", "34", "5") == Fraction(12345 - 1234, 900)
    assert repeating_value("0", "", "142857") == Fraction(1, 7)


def test_inequality_as_interval_by_hand():
    assert inequality_as_interval(r"1 \le x \le 3") == "[1,3]"
    assert inequality_as_interval(r"1<x\leq3") == "(1,3]"
    assert inequality_as_interval("x > 2") == r"(2,\infty)"
    assert inequality_as_interval(r"x\le-1") == r"(-\infty,-1]"
    assert inequality_as_interval("5 > x > 1") == "(1,5)"
    assert inequality_as_interval("2 < x") == r"(2,\infty)"
    # not one variable against bounds: left alone
    assert inequality_as_interval("x < y") is None
    assert inequality_as_interval("1 < x > 3") is None
    assert inequality_as_interval(r"x^2 \le 4") is None
    assert inequality_as_interval("3") is None


def test_canonical_symbols():
    assert canonical_symbols("√12 × π − ∞") == r"\sqrt{12} \times \pi - \infty"
    assert canonical_symbols("∅") == r"\emptyset"
    assert canonical_symbols(r"\mathrm{e}^{2}") == "e^{2}"
    assert canonical_symbols(r"\mathrm{exp}") == r"\mathrm{exp}"


# several boxes in the final <answer> block
def _resp(*boxes: str, sep: str = " and ") -> str:
    return "<reason>work</reason><answer>" + sep.join(f"\\boxed{{{b}}}" for b in boxes) + "</answer>"


def test_one_box_per_part_of_a_multi_part_gold_is_correct():
    g = grade(_resp("3", "5"), "3, 5")
    assert g.status == "correct" and g.extracted == "3, 5"
    assert grade(_resp("5", "3"), "3, 5").correct  # a bare list is order-free, as when boxed together
    assert grade(_resp(r"\frac12", r"\sqrt{2}"), r"\frac{1}{2}, \sqrt{2}").correct
    assert grade(_resp("3, 5"), "3, 5").correct  # one box with the whole list: as before
    assert not grade(_resp("3", "6"), "3, 5").correct
    assert not grade(_resp("3", "5", "7"), "3, 5").correct  # a part too many


def test_several_different_boxes_for_a_single_answer_are_a_hedge():
    g = grade(_resp("3", "5"), "5")
    assert g.status == "incorrect" and "different boxed answers" in g.detail
    assert not grade(_resp("5", "3"), "5").correct
    assert not grade(_resp("4", "5"), r"(4, 5)").correct  # a tuple is one answer, not two parts
    # repeating the same answer is no hedge
    assert grade(_resp("5", "5.0", r"\frac{10}{2}"), "5").correct
    # boxes in the reasoning are drafts: only the final answer block commits
    assert grade(r"<reason>\boxed{3}</reason><answer>\boxed{5}</answer>", "5").correct
    assert grade(r"first \boxed{3}, finally \boxed{5}", "5").correct  # no answer block: last box
