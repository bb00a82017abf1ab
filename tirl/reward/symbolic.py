"""Symbolic answer comparison with math-verify (sympy), under a wall-clock limit.

``symbolic_equal(pred, gold)`` parses both answers with math-verify (LaTeX first, then plain
expressions) and asks ``math_verify.verify`` whether they are the same mathematical object:
fractions vs decimals, radicals, π, powers, intervals and unions, sets (order-free) vs tuples
(ordered, strict: a set never equals a tuple), ``x = 3`` vs ``3``, matrices, complex numbers.
Guards on top of math-verify keep it honest: a set never equals a tuple or interval
(math-verify compares their elements), an answer that hedges between numbers with a word
(``5 \\text{ (or 6)}``, which math-verify reads as 5) is wrong, and ``0.5i`` is read with the
imaginary unit when the other side has one. A non-terminating decimal never equals a plain
fraction: that case is decided exactly by ``tirl.reward.normalize`` before we get here.
An answer math-verify cannot read *whole* equals nothing (``parse_answer``): its search for
something parseable must not let a prefix or a fragment stand in for the answer.

Timeouts: math-verify's own limit uses ``signal.alarm`` with whole seconds and only in the
main thread; we switch it off and use ``time_limit`` (``setitimer``, sub-second) instead.
A signal cannot interrupt a long C call (a huge integer power inside gmpy), so the grader
runs this in worker processes it can kill (``tirl.reward.grader``); in-process callers get
the signal limit only. What this module does not do: extraction, fast paths, processes.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator


class CheckTimeout(BaseException):
    """An equivalence check ran past its time limit. A ``BaseException``, so that
    math-verify's ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``CheckTimeout`` in this (main) thread after ``seconds``; a no-op elsewhere or
    when ``seconds`` is None."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise CheckTimeout(f"equivalence check ran past {seconds:.2f}s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_EXTRACTION = None


def _configs():
    global _EXTRACTION
    if _EXTRACTION is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        import math_verify.grader
        import math_verify.parser

        # we disable math-verify's own (signal.alarm) limits; silence its one-time warning
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        _EXTRACTION = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return _EXTRACTION


_COMMAND = re.compile(r"\\[a-zA-Z]+")
# words math-verify's normalisation turns into symbols ("and" into a comma, "sqrt" into \sqrt)
_VANISHING = re.compile(r"(?<![a-zA-Z])(?:and|or|infinity|inf|percentage|percent|pct|sqrt|th)"
                        r"(?![a-zA-Z])")


def _symbols(s: str) -> Counter:
    return Counter(c for c in _VANISHING.sub(" ", _COMMAND.sub(" ", s)) if c.isascii() and c.isalnum())


def dropped_content(src: str, normalized: str) -> str:
    """Letters and digits of ``src`` that ``normalized`` no longer has (command names aside):
    what math-verify's normalisation threw away as a "unit" (``2m``, ``\\mathrm{e}}``) or
    around an inner box (``2 + \\boxed{3}`` became ``3``). Its one rewrite that changes
    digits, ``0.5`` → ``\\frac{1}{2}``, is allowed."""
    if src.strip() in ("0.5", ".5"):
        return ""
    return "".join(sorted((_symbols(src) - _symbols(normalized)).elements()))


def _bare(ans: str) -> str:
    s = ans.strip().replace("\n", " ")
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) > len(a) + len(b) and s.startswith(a) and s.endswith(b):
            return s[len(a):-len(b)].strip()
    return s


def parse_answer(ans: str) -> list:
    """math-verify's parse of a whole bare answer: ``[value, text]``, or ``[]`` when it
    cannot read *all* of it.

    math-verify searches a text for anything it can parse; for a bare answer that means a
    part it can read stands in for the whole (``1 + \\frac{1}{\\mathrm{e}}`` became ``1`` once
    its normalisation had dropped ``\\mathrm{e}}`` as a unit). So we take only its first,
    widest match (the whole ``$answer$``), require that match's normalised text to be the
    normalisation of the whole answer, and that normalisation to have dropped no letters
    or digits.
    A plain-text answer (``sqrt(2)*3``) falls back to the expression reader, whose match
    must be the whole answer too. An unread remainder means unknown, never a value.
    """
    from latex2sympy2_extended.math_normalization import normalize_latex
    from math_verify import ExprExtractionConfig, parse

    s = _bare(ans)
    if not s:
        return []
    latex = _configs()[0]
    out = parse(f"${s}$", extraction_config=[latex], extraction_mode="first_match",
                parsing_timeout=None)  # type: ignore[arg-type]
    if len(out) == 2 and not isinstance(out[0], str):
        whole = normalize_latex(s, latex.normalization_config)
        if out[1] == whole and not dropped_content(s, whole):
            return out
        return []  # it read a part (or dropped a token): unknown
    out = parse(s, extraction_config=[ExprExtractionConfig()], extraction_mode="first_match",
                parsing_timeout=None)  # type: ignore[arg-type]
    if len(out) == 2 and not isinstance(out[0], str) and out[1].strip() == s:
        return out
    return []


def symbolic_equal(pred: str, gold: str, timeout_s: float | None = None) -> bool:
    """Whether math-verify judges ``pred`` equivalent to ``gold``; raises ``CheckTimeout``
    past ``timeout_s`` (main thread only). Both answers are first put in one spelling
    (``tirl.reward.normalize.rewrite``, ``prepare_pair``, ``strip_unit``); an answer
    math-verify cannot read whole is not equal to anything."""
    from math_verify import verify

    from tirl.reward.normalize import prepare_pair, rewrite, strip_unit

    if _set_vs_tuple(pred, gold) or _hedges(pred, gold):
        return False
    pred, gold = prepare_pair(strip_unit(rewrite(_bare(pred))), strip_unit(rewrite(_bare(gold))))
    with time_limit(timeout_s):
        g = parse_answer(gold)
        p = parse_answer(pred)
        if not g or not p:
            return False
        g, p = _align_imaginary_unit(g, p)
        return bool(verify(g, p, timeout_seconds=None))


def _i_symbols(parsed: list) -> tuple[bool, bool]:
    """(has a symbol ``i`` math-verify read as complex, has any symbol ``i``)."""
    import sympy

    cplx = any_i = False
    for x in parsed:
        if isinstance(x, sympy.Basic):
            for f in x.free_symbols:
                if getattr(f, "name", None) == "i":
                    any_i = True
                    cplx |= f.is_real is False
    return cplx, any_i


def _align_imaginary_unit(g: list, p: list) -> tuple[list, list]:
    """math-verify reads ``1+i`` as a complex ``i`` but ``0.5i`` as a real symbol ``i``, so
    the two never meet; when either side has a complex ``i``, both sides' ``i`` become the
    imaginary unit."""
    import sympy

    (gc, ga), (pc, pa) = _i_symbols(g), _i_symbols(p)
    if not (gc or pc) or not (ga and pa):
        return g, p

    def sub(xs: list) -> list:
        out = []
        for x in xs:
            if isinstance(x, sympy.Basic):
                x = x.subs({f: sympy.I for f in x.free_symbols if getattr(f, "name", None) == "i"})
            out.append(x)
        return out

    return sub(g), sub(p)


def _kind(ans: str) -> str:
    from tirl.reward.normalize import _split_top, clean

    s = clean(ans)
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set"
    if s[:1] in "([" and s[-1:] in ")]" and len(_split_top(s[1:-1])) > 1:
        return "ordered"
    return "other"


def _set_vs_tuple(pred: str, gold: str) -> bool:
    """A set never equals a tuple or interval (math-verify would compare their elements)."""
    kinds = {_kind(pred), _kind(gold)}
    return kinds == {"set", "ordered"}


_HEDGE_WORD = re.compile(r"\b(?:or|and|maybe|either)\b", re.IGNORECASE)
_QUALIFIER = re.compile(r"\b(?:more|less|least|most|greater|fewer|smaller|larger|"
                        r"approximately|about|around|roughly|nearly)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _hedges(pred: str, gold: str) -> bool:
    """``5 \\text{ (or 6)}``, ``5 \\text{ or more}``: several numbers joined by a word, or a
    number with a qualifier, which math-verify would drop. A hedge is never one right answer
    (unless the reference is worded so too)."""
    if _QUALIFIER.search(pred) and not _QUALIFIER.search(gold):
        return True
    return (_HEDGE_WORD.search(pred) is not None and _HEDGE_WORD.search(gold) is None
            and len(_NUMBER.findall(pred)) >= 2)


def warm_up() -> None:
    """Import sympy and math-verify and run one check (a worker's first check is then fast)."""
    symbolic_equal("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}")
