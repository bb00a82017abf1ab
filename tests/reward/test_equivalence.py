"""is_equivalent and grade, in-process: every labeled case, the fast path's guarantees."""

from fractions import Fraction

import pytest

from tests.reward.labeled import LABELED
from tirl.reward import grade, is_equivalent
from tirl.reward.normalize import clean, fast_equal, parse_number


@pytest.mark.parametrize("kind,pred,gold,equal", LABELED,
                         ids=[f"{k}:{p}|{g}" for k, p, g, _ in LABELED])
def test_labeled_pair(kind, pred, gold, equal):
    assert is_equivalent(pred, gold, timeout_s=10.0) is equal


@pytest.mark.parametrize("text,value", [
    ("1,234,567", Fraction(1234567)), ("-0.25", Fraction(-1, 4)), (".5", Fraction(1, 2)),
    (r"\frac{3}{4}", Fraction(3, 4)), (r"\frac34", Fraction(3, 4)), ("-7/8", Fraction(-7, 8)),
    (r"2.5\times10^{-3}", Fraction(1, 400)), ("1e3", Fraction(1000)), ("5.", Fraction(5)),
])
def test_parse_number_is_exact(text, value):
    assert parse_number(clean(text)) == value


@pytest.mark.parametrize("text", ["1,2", "1,23", r"\sqrt{2}", "x", "1/0", r"\frac{1}{0}", "3.", "."
                                  , "1.2.3", "2e", r"3\frac12"])
def test_parse_number_refuses_non_numbers(text):
    # "3." is 3; the rest are not plain numbers
    value = parse_number(clean(text))
    assert (value == 3) if text == "3." else value is None


def test_fast_path_decides_numbers_and_defers_algebra():
    assert fast_equal("1,000", "1000") is True
    assert fast_equal("999", "1000") is False
    assert fast_equal("0.333", r"\frac13") is False
    assert fast_equal(r"\sqrt{4}", "2") is True  # radicals and pi: exact canonical forms
    assert fast_equal(r"\frac{\pi}{3}", r"\frac{\pi}{6}") is False
    assert fast_equal("x+1", "1+x") is True  # polynomials: exact canonical forms too
    assert fast_equal(r"\ln 8", r"3\ln 2") is None  # other algebra: for the symbolic checker
    assert fast_equal(r"\sqrt{2}", "1.41421356") is None  # decimal vs irrational: math-verify's rule
    assert fast_equal("(1,2)", "1, 2") is None  # tuple vs bare list: ambiguous, ask sympy


def test_fast_path_never_equates_different_numbers():
    # exhaustive over a small grid of spellings: equal exactly when the values are equal
    values = [Fraction(n, d) for n in range(-6, 7) for d in (1, 2, 4, 5)]
    spell = {}
    for v in values:
        forms = [str(v.numerator) + ("/" + str(v.denominator) if v.denominator != 1 else "")]
        if 10 ** 3 % v.denominator == 0:
            forms.append(f"{float(v):.3f}")
        spell[v] = forms
    for a in values:
        for b in values:
            for fa in spell[a]:
                for fb in spell[b]:
                    assert fast_equal(fa, fb) is (a == b), (fa, fb)


def test_grade_statuses():
    g = grade(r"<answer>\boxed{\frac{2}{4}}</answer>", "0.5")
    assert g.status == "correct" and g.extracted == r"\frac{2}{4}" and g.method == "fast"
    assert grade(r"<answer>\boxed{3}</answer>", "4").status == "incorrect"
    g = grade("I think it is 4", "4")
    assert g.status == "no_answer" and g.extracted is None and g.reward == 0.0
    g = grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}")
    assert g.correct and g.method == "fast" and g.reward == 1.0
    g = grade(r"\boxed{\ln 8}", r"3\ln 2")
    assert g.correct and g.method == "symbolic"


def test_in_process_timeout_counts_as_not_equal():
    # a tiny limit: the symbolic check cannot finish, and is never counted correct
    from tirl.reward.equivalence import check

    status, method = check(r"\int_0^1 x^{100} \sin(x) dx", r"\frac{\pi}{7}", timeout_s=0.001)
    assert (status, method) == ("timeout", "symbolic")
    assert is_equivalent(r"\int_0^1 x^{100} \sin(x) dx", r"\frac{\pi}{7}", timeout_s=0.001) is False


def test_bad_timeout_is_an_error():
    with pytest.raises(ValueError, match="timeout_s"):
        is_equivalent("1", "1", timeout_s=0)


async def test_is_equivalent_off_the_main_thread_uses_a_worker():
    # signals only work in the main thread: from a thread the symbolic check runs in a
    # one-worker pool instead (and still gives the right verdict)
    import asyncio

    from tirl.reward.equivalence import check

    status, method = await asyncio.to_thread(check, r"\ln 8", r"3\ln 2", 10.0)
    assert (status, method) == ("correct", "symbolic")
    assert await asyncio.to_thread(is_equivalent, r"\ln 8", r"2\ln 2", 10.0) is False


def test_decorations_never_make_different_values_equal():
    # every decoration the fast path strips, on both sides of pairs of different values
    import random

    rng = random.Random(7)
    wraps = ["@", "$@$", r"\text{@}", r"@\text{ cm}", r"@^\circ", "x = @", "@.",
             r"\boxed{@}", r"\left(@\right)", r"\mathbf{@}", "@ ", r"\displaystyle @"]
    forms = [lambda v: str(v), lambda v: f"{v:,}", lambda v: f"{v}.0", lambda v: f"\\frac{{{2 * v}}}{{2}}",
             lambda v: f"{v}\\sqrt{{4}}/2", lambda v: f"0{v}" if v > 0 else str(v)]
    for _ in range(3000):
        a = rng.randint(-2000, 2000)
        b = a + rng.choice([1, -1, 10, 1000, rng.randint(2, 99)])
        pa = rng.choice(wraps).replace("@", rng.choice(forms)(a))
        pb = rng.choice(wraps).replace("@", rng.choice(forms)(b))
        assert fast_equal(pa, pb) is not True, (pa, pb)
        same = rng.choice(wraps).replace("@", rng.choice(forms)(a))
        assert fast_equal(pa, same) is not False, (pa, same)
