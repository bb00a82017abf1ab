"""Exact values of radical, π and polynomial answers, without sympy: ``exact_value(latex)``.

Competition answers are mostly numbers of the form ``q·√n·π^k`` and sums of them
(``2\\sqrt{3}``, ``\\frac{\\pi}{4}``, ``1+\\sqrt{2}``, ``\\frac{3\\sqrt{2}}{4}``), or polynomials
in a variable (``x^2+2x+1``). Such a value has a unique canonical form: a sum of terms
``q·√n·π^k·x^a·y^b…`` with ``q`` rational, ``n`` a squarefree integer and integer
exponents, because the square roots of distinct squarefree integers are linearly
independent over ℚ, π is transcendental, and variables are independent. So two answers in
this class are equal exactly when their canonical forms are equal — no floating point, no
simplification heuristics, and a definite "not equal" otherwise. Variables are single
lower-case letters other than ``e``, ``i``, ``l``; two letters side by side (``xy``, a word,
``f(x)``; ``n(n+1)`` is a product) are left to sympy.

The parser covers integers, decimals, ``\\frac``, ``\\sqrt{}``, ``\\sqrt[m]{}`` of perfect
powers, ``\\pi``, ``+ - * / \\cdot \\times``, implicit products, ``^`` with integer (or
half-integer, on rationals) exponents, and parentheses/braces. Anything else — variables,
``e``, functions, a digit directly before ``\\frac`` (a mixed number is ambiguous), digits
or a brace group right after a number or group (``2{3}``, ``\\frac12 3``: TeX prints them side
by side), ``\\sqrt12`` (TeX's √1·2 or √12?), division by a sum, huge numbers — gives
``None`` and the answer goes to the symbolic check.
The input is a string already cleaned by ``tirl.reward.normalize.clean``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

Mono = tuple[tuple[str, int], ...]  # variables and their (nonzero) exponents, sorted
Key = tuple[int, int, Mono]  # (squarefree radicand n, power of pi k, monomial in variables)
Value = dict[Key, Fraction]

_MAX_BITS = 4096
_MAX_PI = 6
_MAX_TERMS = 48
_TOKEN = re.compile(r"\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|π|√|[-+*/^(){}\[\]]|\S")
# e and i are constants, not variables; capitals are often set names or option letters
_NOT_VARIABLES = set("eiEIOl") | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# letters that multiply a parenthesis (n(n+1)); any other letter before "(" may be a function
_FACTORS = set("abckmntxyz")
_SMALL_PRIMES = [p for p in range(2, 1000) if all(p % d for d in range(2, int(p ** 0.5) + 1))]


ONE: Key = (1, 0, ())


class _NotExact(Exception):
    pass


def _mono_mul(a: Mono, b: Mono, sign: int) -> Mono:
    exps = dict(a)
    for var, e in b:
        exps[var] = exps.get(var, 0) + sign * e
    return tuple(sorted((v, e) for v, e in exps.items() if e != 0))


def _mono_pow(a: Mono, n: int) -> Mono:
    return tuple((v, e * n) for v, e in a if e * n != 0)


def _squarefree(m: int) -> tuple[int, int]:
    """(s, r) with m = s²·r and r squarefree, for 0 < m. Primes below 1000 are divided out;
    what is left has only prime factors above 1000, so below 10⁹ it is 1, p, pq or p² —
    squarefree unless it is a perfect square. Larger leftovers raise _NotExact (sympy's job)."""
    s, r, odd = 1, m, 1
    for p in _SMALL_PRIMES:
        if p * p > r:
            break  # r is 1 or a prime
        e = 0
        while r % p == 0:
            r //= p
            e += 1
        s *= p ** (e // 2)
        odd *= p ** (e % 2)
    root = math.isqrt(r)
    if root * root == r:
        return s * root, odd
    if r >= 10 ** 9:
        raise _NotExact
    return s, odd * r


def _check(v: Value) -> Value:
    if len(v) > _MAX_TERMS:
        raise _NotExact  # an expansion this large is no answer form; keep the caller fast
    for (n, k, mono), q in v.items():
        if abs(k) > _MAX_PI or len(mono) > 8 or any(abs(e) > 64 for _, e in mono) or \
                q.numerator.bit_length() > _MAX_BITS or \
                q.denominator.bit_length() > _MAX_BITS:
            raise _NotExact
    return {key: q for key, q in v.items() if q != 0}


def _const(q: Fraction) -> Value:
    return {ONE: q} if q else {}


def _add(a: Value, b: Value) -> Value:
    out = dict(a)
    for key, q in b.items():
        out[key] = out.get(key, Fraction(0)) + q
    return _check(out)


def _neg(a: Value) -> Value:
    return {key: -q for key, q in a.items()}


def _mul(a: Value, b: Value) -> Value:
    out: Value = {}
    for (n1, k1, m1), q1 in a.items():
        for (n2, k2, m2), q2 in b.items():
            g = math.gcd(n1, n2)
            n = (n1 // g) * (n2 // g)  # √n1·√n2 = g·√(n1 n2 / g²), and n1 n2/g² is squarefree
            key = (n, k1 + k2, _mono_mul(m1, m2, 1))
            out[key] = out.get(key, Fraction(0)) + q1 * q2 * g
    return _check(out)


def _inverse(a: Value) -> Value:
    if len(a) != 1:
        raise _NotExact  # 1 / (sum): rationalising is sympy's job
    ((n, k, mono), q), = a.items()
    return _check({(n, -k, _mono_pow(mono, -1)): 1 / (q * n)})  # 1/(q√n π^k) = √n/(q n)·π^-k


def _rational(a: Value) -> Fraction | None:
    if not a:
        return Fraction(0)
    if len(a) == 1 and ONE in a:
        return a[ONE]
    return None


def _sqrt_rational(q: Fraction) -> Value:
    if q < 0:
        raise _NotExact
    if q == 0:
        return {}
    s, r = _squarefree(q.numerator * q.denominator)  # √(a/b) = √(ab)/b
    return _check({(r, 0, ()): Fraction(s, q.denominator)})


def _root_rational(q: Fraction, m: int) -> Value:
    if m == 2:
        return _sqrt_rational(q)
    if m < 2 or m > 64 or (q < 0 and m % 2 == 0):
        raise _NotExact
    sign = -1 if q < 0 else 1
    parts = []
    for x in (abs(q.numerator), q.denominator):
        r = round(x ** (1.0 / m)) if x.bit_length() < 1000 else None
        if r is None:
            raise _NotExact
        for c in (r - 1, r, r + 1):
            if c >= 0 and c ** m == x:
                parts.append(c)
                break
        else:
            raise _NotExact  # not a perfect power
    return _const(Fraction(sign * parts[0], parts[1]))


def _pow(a: Value, e: Fraction) -> Value:
    if e.denominator == 2:
        q = _rational(a)
        if q is None:
            raise _NotExact
        base = _sqrt_rational(q)
        return _pow(base, Fraction(e.numerator))
    if e.denominator != 1:
        q = _rational(a)
        if q is None or q < 0:
            raise _NotExact
        return _pow(_root_rational(q, e.denominator), Fraction(e.numerator))
    n = e.numerator
    if abs(n) > 4096:
        raise _NotExact
    if n < 0:
        a = _inverse(a)
        n = -n
    if len(a) > 1 and n > 8:
        raise _NotExact
    if len(a) == 1:
        ((r, k, mono), q), = a.items()
        if q.numerator.bit_length() * n > _MAX_BITS or q.denominator.bit_length() * n > _MAX_BITS:
            raise _NotExact
        half, odd = divmod(n, 2)  # (√r)^n = r^(n//2) · √r^(n%2)
        return _check({(r if odd else 1, k * n, _mono_pow(mono, n)): q ** n * Fraction(r) ** half})
    out = _const(Fraction(1))
    for _ in range(n):
        out = _mul(out, a)
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks = _TOKEN.findall(text)
        self.i = 0
        for a, b in zip(self.toks, self.toks[1:]):
            if _is_letter(a) and (_is_letter(b) or (b == "(" and a not in _FACTORS)):
                raise _NotExact  # "yes", "xy", "f(x)": a word, a product or a function call

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _NotExact
        self.i += 1
        return tok

    def parse(self) -> Value:
        v = self.expr()
        if self.peek() is not None:
            raise _NotExact
        return v

    def expr(self) -> Value:
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            t = self.term()
            v = _add(v, t if op == "+" else _neg(t))
        return v

    def term(self) -> Value:
        sign = 1
        while self.peek() in ("+", "-"):
            sign = -sign if self.take() == "-" else sign
        v = self.power()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                v = _mul(v, self.power())
            elif tok == "/":
                self.take()
                v = _mul(v, _inverse(self.power()))
            elif tok is not None and self._starts_primary(tok):
                if tok == "\\frac" and self._prev_is_number():
                    raise _NotExact  # 2\frac{1}{2}: a mixed number or a product?
                if (_is_number(tok) or tok == "{") and self._prev_ends_number_or_group():
                    raise _NotExact  # 2{3}, {2}{3}, \frac12 3: TeX prints digits side by side
                v = _mul(v, self.power())
            else:
                break
        return _neg(v) if sign < 0 else v

    def _prev_is_number(self) -> bool:
        return self.i > 0 and _is_number(self.toks[self.i - 1])

    def _prev_ends_number_or_group(self) -> bool:
        return self.i > 0 and (_is_number(self.toks[self.i - 1]) or self.toks[self.i - 1] == "}")

    @staticmethod
    def _starts_primary(tok: str) -> bool:
        return _is_number(tok) or tok in ("\\pi", "π", "\\frac", "\\sqrt", "√", "(", "{") or \
            _is_letter(tok)

    def power(self) -> Value:
        base = self.primary()
        if self.peek() == "^":
            self.take()
            nxt = self.peek()
            if nxt is not None and _is_number(nxt) and len(nxt) > 1:
                raise _NotExact  # 2^10: TeX reads 2^1·0, a person means 1024
            e = _rational(self.group())
            if e is None:
                raise _NotExact
            base = _pow(base, e)
        return base

    def group(self) -> Value:
        """A TeX argument: ``{expr}`` or a single token (``\\frac12``, ``x^2``)."""
        tok = self.peek()
        if tok == "{":
            self.take()
            v = self.expr()
            self.take("}")
            return v
        if tok is not None and _is_number(tok):
            self.take()
            if len(tok) > 1 and tok.isdigit():  # \frac12 is 1/2: TeX takes one digit
                self.toks[self.i - 1:self.i] = [tok[0], tok[1:]]
            return _const(_number(tok[0] if tok.isdigit() else tok))
        return self.primary()

    def primary(self) -> Value:
        tok = self.take()
        if _is_number(tok):
            return _const(_number(tok))
        if tok in ("\\pi", "π"):
            return {(1, 1, ()): Fraction(1)}
        if _is_letter(tok) and tok not in _NOT_VARIABLES:
            return {(1, 0, ((tok, 1),)): Fraction(1)}
        if tok == "(":
            v = self.expr()
            self.take(")")
            return v
        if tok == "{":
            v = self.expr()
            self.take("}")
            return v
        if tok == "\\frac":
            num = self.group()
            den = self.group()
            return _mul(num, _inverse(den))
        if tok in ("\\sqrt", "√"):
            m = 2
            if self.peek() == "[":
                self.take()
                idx = _rational(self.expr())
                self.take("]")
                if idx is None or idx.denominator != 1:
                    raise _NotExact
                m = int(idx)
            nxt = self.peek()
            if nxt is not None and _is_number(nxt) and len(nxt) > 1:
                if tok == "\\sqrt":
                    raise _NotExact  # \sqrt12: TeX reads √1·2, a person means √12
                self.take()
                return _root_rational(_number(nxt), m)  # √12 takes the whole number
            q = _rational(self.group())
            if q is None:
                raise _NotExact
            return _root_rational(q, m)
        raise _NotExact


def _is_letter(tok: str) -> bool:
    return len(tok) == 1 and tok.isascii() and tok.isalpha()


def _is_number(tok: str) -> bool:
    return tok[:1].isdigit() or (tok[:1] == "." and tok[1:2].isdigit())


def _number(tok: str) -> Fraction:
    return Fraction(tok[:-1] if tok.endswith(".") else tok)


def exact_value(text: str) -> Value | None:
    """The canonical form of a cleaned answer in the radical/π class, or None."""
    if not text or len(text) > 300:
        return None
    try:
        return _Parser(text).parse()
    except (_NotExact, ZeroDivisionError, ValueError, OverflowError, RecursionError):
        return None


def is_rational(v: Value) -> bool:
    return _rational(v) is not None


def has_irrational(v: Value) -> bool:
    """Whether a term has a square root or a power of π (variables do not count)."""
    return any(n != 1 or k != 0 for n, k, _ in v)
