"""False positives, path by path: pairs of different values that must never be judged equal.

Each path that can answer *equal* gets its own adversarial pairs: the exact fast path
(``fast_equal``), the exact canonical forms (``exact_value``), the math-verify wrapper
(``symbolic_equal``), and the whole pipeline (``is_equivalent``). The bug class is the same
everywhere: a separator read as part of a number, a prefix parsed and the rest dropped, a
token silently thrown away. An unparsed remainder must mean *unknown*, never *equal*.
"""

import pytest

from tirl.reward import is_equivalent
from tirl.reward.exact import exact_value
from tirl.reward.normalize import clean, fast_equal
from tirl.reward.symbolic import parse_answer, symbolic_equal

# (pred, gold): different values, whatever the spelling
FAST_PATH_PAIRS = [
    ("32, 349", "32349"),  # a comma and a space separate list items, not thousands
    ("1, 000", "1000"),
    ("12, 345, 678", "12345678"),
    (r"1,\ 000", "1000"),
    (r"32,\;349", "32349"),
    ("1, 000", "1,000"),
    (r"5\text{ thousand}", "5"),  # a word that scales the number is no unit
    (r"5\text{ million}", "5"),
    (r"3\text{ hundred}", "3"),
    (r"2\text{ dozen}", "2"),
    ("√12", "2"),  # √ takes the whole number: √12 = 2√3
    ("5,6", "5"),
    ("5, 6", "5"),
    (r"0.\overline{3}", "0.3"),
    (r"0.\overline{3}", "0.333"),
    (r"0.1\overline{6}", r"0.16"),
    (r"0.\overline{12}", r"\frac{1}{9}"),
    (r"1 \le x \le 3", "(1,3)"),
    (r"1 < x < 3", "[1,3]"),
    ("x > 2", r"[2, \infty)"),
    ("x < 2", r"(2, \infty)"),
    ("x > 2", r"(-\infty, 2)"),
    (r"\frac{1}{2}\%", r"\frac{1}{20}"),
    ("∞", r"-\infty"),
    (r"\{1, 2\}", r"\{1, 2, 3\}"),
    (r"\text{B}\text{C}", "B"),  # text after text is no unit
    (r"\text{east}\text{ m}", r"\text{east}"),
]


@pytest.mark.parametrize("pred,gold", FAST_PATH_PAIRS)
def test_fast_path_never_says_equal_to_a_different_value(pred, gold):
    assert fast_equal(pred, gold) is not True
    assert fast_equal(gold, pred) is not True


def test_comma_space_is_not_a_thousands_separator_but_comma_and_negative_space_are():
    assert fast_equal("32, 349", "32349") is not True
    assert fast_equal("32,349", "32349") is True
    assert fast_equal(r"10,\!000", "10000") is True  # MATH's own spelling of 10000
    assert fast_equal("1{,}000", "1000") is True
    assert clean("32, 349") != clean("32349")


# (latex) whose exact canonical form would silently read a different value: must be None
EXACT_REFUSES = [
    r"\sqrt12",  # TeX reads √1·2, a person means √12: ambiguous
    "{2}{3}",  # TeX prints 23, a product reading gives 6
    "2{3}",
    r"\frac{1}{2}3",  # mixed number or product?
    r"\sqrt{2}3",
    r"3 \foo 4",
    "2)",
    "(2",
]


@pytest.mark.parametrize("text", EXACT_REFUSES)
def test_exact_forms_refuse_ambiguous_juxtapositions(text):
    assert exact_value(clean(text)) is None


def test_exact_forms_still_read_products():
    assert exact_value(clean(r"2\sqrt{3}")) == exact_value(clean(r"\sqrt{12}"))
    assert exact_value(clean(r"3\pi")) is not None
    assert exact_value(clean("2(x+1)")) == exact_value(clean("2x+2"))
    assert exact_value(clean(r"\frac{1}{2}x")) is not None


# (pred, gold) that math-verify alone judges equal although they differ: it parses a prefix
# or drops a token (a trailing \mathrm{...} read as a unit, a stray bracket) and compares
# what is left
SYMBOLIC_PAIRS = [
    (r"1 + \frac{1}{\mathrm{e}}", r"1 - \frac{1}{\mathrm{e}}"),
    (r"1 + \frac{1}{\text{e}}", "1"),
    (r"1 + \frac{1}{\mathrm{E}}", "1"),
    (r"1-\frac{2}{\mathrm{e}^2}", "1"),
    (r"3 \cdot \mathrm{e}", "3"),
    (r"2 \mathrm{e}", "2"),
    (r"\frac{1}{2}\mathrm{e}^{-1}", r"\frac12"),
    (r"\frac{3}{4}\mathrm{e}", r"\frac34"),
    (r"x^2 \mathrm{e}^{x}", "x^2"),
    (r"4 + \mathrm{i}", "4"),
    ("2d", "2"),
    ("2m", "2"),
    (r"3\text{ wait}", "3"),
    (r"3 \quad \text{(}x\text{)}", "3"),
    ("2)", "2"),
    ("12, 345", "12345"),
    (r"5 \text{ thousand}", "5"),
    (r"2 + \boxed{3}", "3"),  # math-verify reads the inner box and drops the rest
    (r"\boxed{2} + 3", "2"),
    (r"2 \cdot \fbox{3}", "3"),
]


@pytest.mark.parametrize("pred,gold", SYMBOLIC_PAIRS)
def test_symbolic_path_never_equates_a_prefix(pred, gold):
    assert symbolic_equal(pred, gold, 10.0) is False
    assert symbolic_equal(gold, pred, 10.0) is False


@pytest.mark.parametrize("pred,gold", SYMBOLIC_PAIRS + FAST_PATH_PAIRS)
def test_pipeline_never_equates_different_values(pred, gold):
    assert is_equivalent(pred, gold, timeout_s=10.0) is False


def test_a_partial_parse_is_unknown_not_a_value():
    # math-verify finds "1" inside "1 + \frac{1}{\mathrm{e}}" once its normalisation has eaten
    # the "\mathrm{e}}": the wrapper reports nothing parsed rather than that prefix
    assert parse_answer(r"1 + \frac{1}{\mathrm{q}") == []
    assert parse_answer("2)") == []
    assert parse_answer(r"3 \cdot \mathrm{m}") == []  # math-verify drops "m" as a unit


def test_whole_answers_still_parse():
    import sympy

    from tirl.reward.normalize import rewrite

    def value(ans):
        return parse_answer(ans)[0]

    assert sympy.simplify(value(r"\frac{\sqrt{8}}{2}") - sympy.sqrt(2)) == 0
    assert sympy.simplify(value(rewrite(r"1 + \frac{1}{\mathrm{e}}")) - 1 - sympy.exp(-1)) == 0
    assert sympy.simplify(value("sqrt(2)*3") - 3 * sympy.sqrt(2)) == 0
    assert sympy.simplify(value(r"7 \%") - sympy.Rational(7, 100)) == 0
