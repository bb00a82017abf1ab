"""Exact answer comparison without sympy: the fast path of the grader.

``fast_equal(pred, gold)`` answers ``True``/``False`` when both answers are in a form it can
decide exactly, and ``None`` ("undecided, ask the symbolic checker") otherwise. It decides:

- plain numbers, compared as exact rationals: integers (``1,000``, ``1{,}000``, ``1\\,000``,
  leading zeros, ``5.0``), terminating decimals (``.5``), fractions (``\\frac{3}{4}``,
  ``\\dfrac34``, ``-3/4``), scientific notation (``1.5\\times 10^{3}``, ``1.5e3``). Because
  the comparison is exact, ``0.333`` never equals ``1/3``;
- percentages against plain numbers (``50\\%`` equals ``50`` and ``0.5``);
- answers wrapped in ``$…$``, ``\\text{}``, ``\\mathrm{}``, with a trailing unit
  (``5\\text{ cm}``), degrees (``30^\\circ``), a leading ``x =``, or a trailing period;
- multiple-choice letters (``B``, ``(B)``, ``\\text{(B)}``) when the gold is a letter;
- sets (order-free), tuples and intervals (ordered, brackets must match) of exact numbers;
- radicals, π and polynomials in single-letter variables, by exact canonical forms
  (``tirl.reward.exact``);
- word answers (``\\text{east}``), case-insensitively;
- identical strings after this normalization.

Before comparing, ``rewrite`` turns other spellings into one LaTeX form (also used by the
symbolic checker): Unicode symbols (``∞ ∅ π √ − × · ≤ ≥ ± ²``), ``\\mathrm{e}``/``\\mathrm{i}``
(upright Euler's number and imaginary unit), ``\\varnothing``, repeating decimals
(``0.1\\overline{6}`` becomes ``\\frac{1}{6}``) and trailing punctuation (``\\frac13,``).
``prepare_pair`` also reads a one-variable inequality as an interval when the other answer
is one (``1 \\le x \\le 3`` against ``[1,3]``).

A comma followed by a space separates list items, never thousands (``32, 349`` is not
32349); a word after a number that scales it (``5\\text{ thousand}``) or takes it back
(``3\\text{ wait}``) is no unit.

It never says ``True`` for two different values; anything it is unsure of is ``None``.

What it does not do: general algebra (functions, logarithms, equations, rationalising
denominators, matrices) — that is ``tirl.reward.symbolic``'s job, in a worker process.
"""

from __future__ import annotations

import re
from fractions import Fraction

from tirl.reward.exact import exact_value, has_irrational

_MAX_LEN = 400
_DELIMS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]
_SPACING = re.compile(r"\\[,;: ]|\\quad|\\qquad|~|\\displaystyle|\\left(?![a-zA-Z])|"
                      r"\\right(?![a-zA-Z])|\\big(?![a-zA-Z])|\\Big(?![a-zA-Z])")
_WRAPPER = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{(.*)\}$",
                      re.DOTALL)
_DEGREES = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![a-zA-Z]))\s*(?:\\text\{?\s*[CF]?\s*\}?)?$")
_UNIT = re.compile(r"^(.*?[0-9}])\s*\\(?:text|mbox|textrm)\s*\{(\s*[a-zA-Z][a-zA-Z .^/\d]*)\}"
                   r"(?:\s*\^\s*\{?\d\}?)?$", re.DOTALL)
# a unit follows math; text after text is more words (\text{B}\text{C} is not B in C)
_ENDS_IN_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}$")
_NOT_A_UNIT = re.compile(
    r"\b(?:or|and|to|maybe|either|not|than|plus|minus|no|but|if|unless|except|wait|"
    r"possibly|probably|perhaps|approximately|approx|about|around|roughly|nearly|over|under|"
    r"thousands?|millions?|billions?|trillions?|hundreds?|dozens?|score|grand|"
    r"percent|times|squared|cubed|halves|half|thirds?|quarters?|tenths?|hundredths?|"
    r"thousandths?|millionths?)\b|(?<!\^)\d", re.IGNORECASE)
_ASSIGN = re.compile(r"^\s*[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\s*=\s*(?=\S)")
_CHOICE = re.compile(r"^\(?([A-J])\)?\.?$")
_DIGIT_GAP = re.compile(r"(?<=\d)\s+(?=\d)")
# whitespace goes, except between letters and after a comma before a digit ("32, 349" is a
# list of two numbers, not 32349)
_WS = re.compile(r"(?<!,)\s+(?![A-Za-z])|(?<![A-Za-z,])\s+")
_COMMA_GAP = re.compile(r",\s+(\d?)")
_TRAILING = re.compile(r"\s*[.,;]\s*$")

_SIGN = r"[-+]?"
_UINT = r"(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?:'\d{3})+|\d+)"
_UDEC = rf"(?:{_UINT}\.\d*|\.\d+|{_UINT})"
_INT_RE = re.compile(rf"^({_SIGN})({_UINT})$")
_DEC_RE = re.compile(rf"^({_SIGN})({_UDEC})$")
_SCI_RE = re.compile(rf"^({_SIGN}{_UDEC})(?:\\times|\\cdot|\*)10\^(?:\{{([-+]?\d+)\}}|([-+]?\d))$")
_E_RE = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d+)$")
_SLASH_RE = re.compile(rf"^({_SIGN}{_UDEC})/({_SIGN}{_UDEC})$")
_FRAC_RE = re.compile(r"^([-+]?)\\frac(?:\{([^{}]*)\}|(\d))(?:\{([^{}]*)\}|(\d))$")
_DECIMAL = re.compile(r"\d\.|\.\d")
_PCT_RE = re.compile(r"^(.*?)\\?%$")


_BOX_WRAP = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.DOTALL)


def _strip_delims(s: str) -> str:
    s = s.strip()
    while s[:1] == "$" or s[:1] == "\\":  # cheap exit: most answers have no delimiters
        before = s
        for a, b in _DELIMS:
            if len(s) > len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a):-len(b)].strip()
        m = _BOX_WRAP.match(s)
        if m and _balanced(m.group(1)):
            s = m.group(1).strip()
        if s == before:
            break
    return s


def _balanced(s: str) -> bool:
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


def clean(ans: str) -> str:
    """A canonical spelling of an answer: no delimiters, spacing commands, wrappers, units,
    degrees, leading ``x =`` or trailing period; ``\\dfrac``→``\\frac``; whitespace removed
    except between letters. Used for fast comparison only (never shown to sympy)."""
    s = rewrite(_strip_delims(ans))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("\\!", "")
    s = _SPACING.sub(" ", s).strip()
    s = _COMMA_GAP.sub(lambda m: ", " + m.group(1) if m.group(1) else ",", s)
    for _ in range(4):
        before = s
        s = _trim_punctuation(s)
        m = _WRAPPER.match(s)
        if m and _balanced(m.group(1)):
            s = m.group(1).strip()
        s = _DEGREES.sub("", s)
        s = strip_unit(s)
        if "=" in s and s.count("=") == 1 and "," not in s:
            s = _ASSIGN.sub("", s)
        s = _strip_delims(s)
        if s == before:
            break
    s = _DIGIT_GAP.sub("'", s)  # "1 000" may be a number, "2 3/4" is not 23/4: keep a mark
    return _WS.sub("", s)


def _trim_punctuation(s: str) -> str:
    """One trailing ``.``, ``,`` or ``;`` off (``\\frac13,``, ``5.``); an ellipsis stays."""
    s = s.rstrip()
    if s[-1:] not in (".", ",", ";") or s.endswith("..."):
        return s  # an ellipsis stays
    return _TRAILING.sub("", s)


# Unicode symbols and their LaTeX commands; a command gets a space when a letter follows
_UNICODE = {"∞": "\\infty", "∅": "\\emptyset", "π": "\\pi", "×": "\\times", "·": "\\cdot",
            "⋅": "\\cdot", "÷": "\\div", "≤": "\\le", "≥": "\\ge", "≠": "\\ne", "∪": "\\cup",
            "∩": "\\cap", "∈": "\\in", "±": "\\pm", "\\varnothing": "\\emptyset"}
_PLAIN = str.maketrans({"−": "-", "\u2212": "-", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
                        "²": "^{2}", "³": "^{3}"})
_SYMBOL = re.compile(r"(\\varnothing(?![a-zA-Z])|[∞∅π×·⋅÷≤≥≠∪∩∈±])([a-zA-Z]?)")
_UPRIGHT = re.compile(r"\\(?:mathrm|text|textrm|mathit|operatorname|rm)\s*\{\s*([ei])\s*\}([a-zA-Z]?)")
_RADICAL = re.compile(r"√\s*(\d+(?:\.\d+)?|[a-zA-Z]|\\pi(?![a-zA-Z])|\()?")
_REPEATING = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\(?:overline|bar)\s*(?:\{\s*(\d+)\s*\}|(\d))(?![\d.])")


def canonical_symbols(ans: str) -> str:
    """Unicode math symbols as LaTeX (``√12`` → ``\\sqrt{12}``, ``∞`` → ``\\infty``, ``−`` → ``-``),
    ``\\varnothing`` as ``\\emptyset``, and an upright ``\\mathrm{e}`` or ``\\mathrm{i}`` as
    plain ``e``/``i`` (Euler's number, the imaginary unit)."""
    s = ans
    if not s.isascii():
        s = s.translate(_PLAIN)
        if "√" in s:
            s = _radicals(s)
    if "\\varnothing" in s or not s.isascii():
        s = _SYMBOL.sub(lambda m: _UNICODE[m.group(1)] + (" " + m.group(2) if m.group(2) else ""), s)
    if ("e}" in s or "i}" in s) and _UPRIGHT.search(s):
        s = _UPRIGHT.sub(lambda m: m.group(1) + (" " + m.group(2) if m.group(2) else ""), s)
    return s


def _radicals(s: str) -> str:
    """``√`` takes the whole number, letter or parenthesis after it: ``√12`` is √12 (not
    TeX's ``\\sqrt12`` = √1·2), ``√(x+1)`` is √(x+1)."""
    out, pos = [], 0
    for m in _RADICAL.finditer(s):
        out.append(s[pos:m.start()])
        arg = m.group(1)
        pos = m.end()
        if arg is None:
            out.append("\\sqrt")
        elif arg == "(":
            depth, j = 1, pos
            while j < len(s) and depth:
                depth += (s[j] == "(") - (s[j] == ")")
                j += 1
            if depth:
                out.append("\\sqrt(")  # unbalanced: leave it for the parsers to refuse
                continue
            out.append("\\sqrt{" + s[pos:j - 1] + "}")
            pos = j
        else:
            out.append("\\sqrt{" + arg + "}")
    out.append(s[pos:])
    return "".join(out)


def repeating_value(whole: str, fixed: str, period: str) -> Fraction:
    """The value of ``whole.fixed(period)(period)…``: with ``n`` = the digits up to and
    including one period and ``m`` = the digits before it, ``(n - m) / (10^len(fixed) ·
    (10^len(period) - 1))``. ``0.1\\overline{6}``: (16 - 1) / (10 · 9) = 1/6."""
    if not period:
        raise ValueError("a repeating decimal needs a repeating digit")
    n = int(whole + fixed + period or "0")
    m = int(whole + fixed or "0")
    return Fraction(n - m, 10 ** len(fixed) * (10 ** len(period) - 1))


def _repeating(s: str) -> str:
    def frac(m: re.Match) -> str:
        v = repeating_value(m.group(1), m.group(2), m.group(3) or m.group(4))
        return str(v.numerator) if v.denominator == 1 else f"\\frac{{{v.numerator}}}{{{v.denominator}}}"

    return _REPEATING.sub(frac, s)


def rewrite(ans: str) -> str:
    """One LaTeX spelling for the symbolic and exact checkers alike: ``canonical_symbols``,
    repeating decimals as fractions, no trailing ``.``/``,``/``;``. Cheap when nothing
    applies (substring checks first)."""
    s = canonical_symbols(ans)
    if "\\overline" in s or "\\bar" in s:
        s = _repeating(s)
    return _trim_punctuation(s)


def strip_unit(ans: str) -> str:
    """``ans`` without a trailing unit (``5\\text{ cm}``, ``\\frac{\\pi}{2}\\text{ m}^2``) when the
    word is a unit, not a hedge or a scale (see ``_NOT_A_UNIT``); otherwise unchanged."""
    s = ans.strip()
    m = _UNIT.match(s)
    if m and _balanced(m.group(1)) and not _NOT_A_UNIT.search(m.group(2)) \
            and not _ENDS_IN_TEXT.search(m.group(1)):
        return m.group(1).strip()
    return s


def parse_number(s: str) -> Fraction | None:
    """The exact value of a plain number in cleaned form, or None if ``s`` is not one."""
    if not s or len(s) > 200:
        return None
    m = _INT_RE.match(s)
    if m:
        v = Fraction(int(m.group(2).replace(",", "").replace("'", "")))
        return -v if m.group(1) == "-" else v
    m = _DEC_RE.match(s)
    if m:
        body = m.group(2).replace(",", "").replace("'", "")
        if body in (".",):
            return None
        v = Fraction(body if not body.endswith(".") else body[:-1])
        return -v if m.group(1) == "-" else v
    m = _FRAC_RE.match(s)
    if m:
        num = parse_number(m.group(2) if m.group(2) is not None else m.group(3))
        den = parse_number(m.group(4) if m.group(4) is not None else m.group(5))
        if num is None or den is None or den == 0:
            return None
        v = num / den
        return -v if m.group(1) == "-" else v
    m = _SLASH_RE.match(s)
    if m:
        num, den = parse_number(m.group(1)), parse_number(m.group(2))
        if num is None or den is None or den == 0:
            return None
        return num / den
    m = _SCI_RE.match(s)
    if m:
        mant = parse_number(m.group(1))
        exp = int(m.group(2) if m.group(2) is not None else m.group(3))
        if mant is None or abs(exp) > 400:
            return None
        return mant * Fraction(10) ** exp
    m = _E_RE.match(s)
    if m:
        exp = int(m.group(2))
        if abs(exp) > 400:
            return None
        return Fraction(m.group(1)) * Fraction(10) ** exp
    return None


def _percent(s: str) -> Fraction | None:
    m = _PCT_RE.match(s)
    return parse_number(m.group(1)) if m else None


_WORD = re.compile(r"^[A-Za-z][A-Za-z\- ]*[A-Za-z]$")
_TEXTY = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{")


def _words(pred: str, p: str, gold: str, g: str) -> bool | None:
    """Word answers (``\\text{east}``, ``Evelyn``) compare case-insensitively. Two letters
    side by side may be a product (``xy``), so a bare word counts only from 4 letters on."""
    if not (_WORD.match(p) and _WORD.match(g)):
        return None
    texty = _TEXTY.search(pred) or _TEXTY.search(gold)
    if not texty and (len(p) < 4 or len(g) < 4):
        return None
    return p.replace(" ", "").lower() == g.replace(" ", "").lower()


_BASED = re.compile(r"^([0-9A-Za-z]+)_\{?([2-9]|[12]\d|3[0-6])\}?$")


def _based(s: str) -> tuple[str, int] | None:
    m = _BASED.match(s)
    if m is None:
        return None
    try:
        int(m.group(1), int(m.group(2)))
    except ValueError:
        return None  # not a numeral in that base (x_1 is a variable)
    return m.group(1).upper(), int(m.group(2))


def _same_based(p: str, g: str) -> bool | None:
    """Numerals with a base (``204_5``): equal values in their bases; a bare numeral against
    a based one is read in that base (the question named it). math-verify drops the base."""
    pb, gb = _based(p), _based(g)
    if pb is None and gb is None:
        return None
    if pb is not None and gb is not None:
        return int(pb[0], pb[1]) == int(gb[0], gb[1])
    digits, base = pb or gb  # type: ignore[misc]
    other = g if pb is not None else p
    if re.fullmatch(r"[0-9A-Za-z]+_\{?\d+\}?", other):
        return False  # a subscript that is no base (40_0): not the based numeral asked for
    if re.fullmatch(r"[0-9A-Za-z]+", other) is None:
        return None
    try:
        return int(other, base) == int(digits, base)
    except ValueError:
        return False  # a digit that base does not have


def _choice(s: str) -> str | None:
    m = _CHOICE.match(s)
    return m.group(1) if m else None


_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}


_RELATION = re.compile(r"\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<=|>=|<|>|≤|≥")
_LESS = {"\\leqslant": "<=", "\\leq": "<=", "\\le": "<=", "<=": "<=", "≤": "<=", "\\lt": "<", "<": "<"}
_GREATER = {"\\geqslant": ">=", "\\geq": ">=", "\\ge": ">=", ">=": ">=", "≥": ">=", "\\gt": ">", ">": ">"}
_VARIABLE = re.compile(r"^[a-zA-Z]$")
_BAD_BOUND = re.compile(r"[=,;]|\\(?:cup|cap|in|ne|neq|text|mathrm)(?![a-zA-Z])")


def _relation_tokens(s: str) -> list[str] | None:
    parts: list[str] = []
    pos = 0
    for m in _RELATION.finditer(s):
        end = m.end()
        if m.group(0).startswith("\\") and end < len(s) and s[end].isalpha():
            return None  # \left, \geqq, ...: not a relation we read
        parts += [s[pos:m.start()].strip(), _LESS.get(m.group(0)) or _GREATER[m.group(0)]]
        pos = end
    parts.append(s[pos:].strip())
    return parts


def inequality_as_interval(ans: str) -> str | None:
    """A one-variable inequality as an interval: ``1 \\le x < 3`` → ``[1,3)``, ``x > 2`` →
    ``(2,\\infty)``, ``5 > x > 1`` → ``(1,5)``; None for anything else (``x < y``, ``x^2 < 4``,
    ``1 < x > 3``, no relation). The bounds are kept as written."""
    if not any(c in ans for c in "<>≤≥") and "\\l" not in ans and "\\g" not in ans:
        return None
    parts = _relation_tokens(_strip_delims(ans))
    if parts is None or len(parts) not in (3, 5) or any(not p for p in parts):
        return None
    if len(parts) == 3:
        a, op, b = parts
        if _VARIABLE.match(b) and not _VARIABLE.match(a):  # 2 < x: read as x > 2
            a, b, op = b, a, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        if not _VARIABLE.match(a) or not _is_bound(b, a):
            return None
        if op in ("<", "<="):
            return f"(-\\infty,{b}{']' if op == '<=' else ')'}"
        return f"{'[' if op == '>=' else '('}{b},\\infty)"
    lo, op1, var, op2, hi = parts
    if not _VARIABLE.match(var) or not (_is_bound(lo, var) and _is_bound(hi, var)):
        return None
    if op1[0] != op2[0]:
        return None  # 1 < x > 3: no interval
    if op1[0] == ">":  # 5 > x >= 1 is 1 <= x < 5
        lo, hi, op1, op2 = hi, lo, op2.replace(">", "<"), op1.replace(">", "<")
    return f"{'[' if op1 == '<=' else '('}{lo},{hi}{']' if op2 == '<=' else ')'}"


def _is_bound(b: str, var: str) -> bool:
    """A bound is an expression without the variable, relations or lists in it."""
    if _BAD_BOUND.search(b) or _VARIABLE.match(b):
        return False
    return var not in re.sub(r"\\[a-zA-Z]+", "", b)


def _looks_like_interval(s: str) -> bool:
    t = _strip_delims(s)
    return (t[:1] in "([" and t[-1:] in ")]" and "," in t) or "\\cup" in t or "∪" in t


def prepare_pair(pred: str, gold: str) -> tuple[str, str]:
    """``(pred, gold)`` with a one-variable inequality rewritten as an interval when the other
    answer is an interval (``x > 2`` against ``(2, \\infty)``); otherwise unchanged."""
    if _RELATION.search(pred) is None and _RELATION.search(gold) is None:
        return pred, gold  # the common case: no relation on either side
    if _looks_like_interval(gold):
        iv = inequality_as_interval(pred)
        if iv is not None:
            return iv, gold
    elif _looks_like_interval(pred):
        iv = inequality_as_interval(gold)
        if iv is not None:
            return pred, iv
    return pred, gold


def _split_top(s: str) -> list[str]:
    """Split on commas outside any bracket."""
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _element(s: str) -> object | None:
    """A hashable exact value of one element of a collection (number or radical/π form)."""
    n = parse_number(s)
    if n is not None:
        return n
    if _DECIMAL.search(s):
        return None
    v = exact_value(s)
    return None if v is None else frozenset(v.items())


def _collection(s: str) -> tuple[str, str, list] | None:
    """(open, close, values) for a set/tuple/interval/bare list of exact numbers."""
    opener = closer = ""
    body = s
    if s.startswith("\\{") and s.endswith("\\}"):
        opener, closer, body = "\\{", "\\}", s[2:-2]
    elif s[:1] in "([" and s[-1:] in ")]":
        opener, closer, body = s[0], s[-1], s[1:-1]
    if not body or any(c in body for c in "()[]") or "\\{" in body:
        return None
    parts = [p.strip() for p in _split_top(body)]
    if len(parts) < 2 and opener != "\\{":
        return None
    vals = [_element(p) for p in parts]
    if any(v is None for v in vals):
        return None
    return opener, closer, vals  # type: ignore[return-value]


def fast_equal(pred: str, gold: str) -> bool | None:
    """True/False when decidable exactly without sympy, else None (see module doc)."""
    if len(pred) > _MAX_LEN or len(gold) > _MAX_LEN:
        return None  # an essay in a box: the worker (with its time limit) may read it
    pred, gold = prepare_pair(pred, gold)
    p, g = clean(pred), clean(gold)
    if not p or not g:
        return None
    if p == g:
        return True
    word = _words(pred, p, gold, g)
    if word is not None:
        return word
    gc = _choice(g)
    if gc is not None:
        pc = _choice(p)
        if pc is not None:
            return pc == gc
        return None
    based = _same_based(p, g)
    if based is not None:
        return based
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return pn == gn
    if gn is not None:
        pp = _percent(p)
        if pp is not None:
            return gn == pp or gn == pp / 100
    if pn is not None:
        gp = _percent(g)
        if gp is not None:
            return pn == gp or pn == gp / 100
    if "," in p and "," in g:
        if pn is not None or gn is not None:
            return None  # "1,000" (a number) against "1, 000" (a list): not for the fast path
        pc_, gc_ = _collection(p), _collection(g)
        if pc_ is not None and gc_ is not None:
            return _same_collection(pc_, gc_)
        return None
    pe, ge = exact_value(p), exact_value(g)
    if pe is None or ge is None:
        return None
    if (_DECIMAL.search(p) or _DECIMAL.search(g)) and (has_irrational(pe) or has_irrational(ge)):
        return None  # a decimal vs an irrational: math-verify's rounding rule decides
    return pe == ge


def _same_collection(a: tuple[str, str, list], b: tuple[str, str, list]) -> bool | None:
    (ao, ac, av), (bo, bc, bv) = a, b
    a_set = ao in ("", "\\{")
    b_set = bo in ("", "\\{")
    if a_set and b_set:
        return set(av) == set(bv)
    if a_set != b_set:
        return None if (ao == "" or bo == "") else False  # bare list vs tuple: ask sympy
    if (ao, ac) != (bo, bc):
        return False
    return av == bv
