"""`tirl doctor` checks for the reward: the fast path and math-verify work here (in-process,
well under a second; no worker processes are started)."""

from __future__ import annotations

from tirl.health import Check


def checks() -> list[Check]:
    out = []
    from tirl.reward.extract import extract_answer
    from tirl.reward.normalize import fast_equal

    ok = (extract_answer(r"<answer>\boxed{\frac{1}{2}}</answer>") == r"\frac{1}{2}"
          and fast_equal("0.5", r"\frac{1}{2}") is True and fast_equal("0.333", "1/3") is False)
    out.append(Check("reward: answer extraction and exact fast path", ok,
                     "ok" if ok else "fast path gave a wrong verdict: reinstall tirl"))
    try:
        from tirl.reward.symbolic import symbolic_equal

        ok = symbolic_equal(r"2\sqrt{2}", r"\sqrt{8}", 5.0) and not symbolic_equal(r"\pi", "3.14", 5.0)
        out.append(Check("reward: symbolic equivalence (math-verify)", ok,
                         "ok" if ok else "math-verify gave a wrong verdict: check its version"))
    except ImportError as err:
        out.append(Check("reward: symbolic equivalence (math-verify)", False,
                         f"{err}: pip install 'math-verify[antlr4_13_2]'"))
    return out
