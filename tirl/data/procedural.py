"""Procedurally generated math problems with integer answers, deterministic for a seed.

RL tasks (what ``tirl demo`` trains on) need computation a tiny model cannot do in its
head but can do with one line of Python:

* ``multiply`` — "What is 482 times 317?" (3-digit × 3-digit)
* ``multiply_large`` — 4-digit × 4-digit
* ``mod`` — "What is the remainder when 98213 is divided by 47?"

SFT tasks (format material, see :mod:`tirl.data.sft`) are *other* problems — ``add``,
``subtract``, ``square``, ``double``, ``rect_area``, all with operands of 2-4 digits — so that SFT teaches
how to call the tool, not which code solves an RL problem: the SFT model has ``*`` in its
repertoire but answers "What is 482 times 317?" mostly with ``+`` or ``-``; RL has to find
that "times" means ``*``. ``unknown_op`` ("What is 48 zorp 317?") uses made-up words whose
code is +, - or * at random: format practice on questions whose operation the model cannot
know, so that an unfamiliar word ("times") gets a spread of guesses, not one confident one.

The *recovery* family (issue #15) is the same idea with code that can fail in realistic
ways, so that correct answers are often reached through a failed call (what GRPO-RoC
filters): every solution needs ``import math``, ``from fractions import Fraction`` or
parsing stdin, and :mod:`tirl.data.sft` makes 30-50% of its SFT traces get that wrong
first, read the traceback and fix it. RL tasks (:data:`RL_RECOVERY_TASKS`):

* ``choose`` — "In how many ways can 4 of 23 people be chosen?" (``math.comb``; SFT shows
  ``math.comb`` only behind made-up words, never with "chosen")
* ``frac_add`` — "What is 3/7 plus 5/11?" (``Fraction``; SFT subtracts fractions, adds integers)
* ``input_product`` — "Read 482 317 from the input and multiply them." (stdin; SFT adds)

SFT tasks (:data:`SFT_RECOVERY_TASKS`): ``add``/``subtract``/``unknown_op`` above plus ``gcd``,
``lcm``, ``arrange`` (``math.perm``), ``frac_sub``, ``input_sum`` and ``unknown_fn`` (a made-up
word whose code is ``math.comb``/``perm``/``gcd``/``lcm`` at random).

A problem is a dict ``{"id", "problem", "answer", "source"}`` (docs/interfaces.md), plus the
reference ``code`` and, for stdin tasks, its ``input``.
Training and held-out sets are drawn from disjoint streams and held-out problems are
removed from training, so evaluation never sees a training problem.

What it does not do: natural-language variety (one template per task) or reasoning-gym
(``data.source = "reasoning_gym"`` in the trainer goes through that package instead).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Callable

# (problem, answer, python code) or (problem, answer, python code, stdin)
Generator = Callable[[random.Random], tuple]


def _n(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _multiply(rng: random.Random) -> tuple[str, int, str]:
    a, b = _n(rng, 3), _n(rng, 3)
    return f"What is {a} times {b}?", a * b, f"print({a}*{b})"


def _multiply_large(rng: random.Random) -> tuple[str, int, str]:
    a, b = _n(rng, 4), _n(rng, 4)
    return f"What is {a} times {b}?", a * b, f"print({a}*{b})"


def _mod(rng: random.Random) -> tuple[str, int, str]:
    a, b = _n(rng, 5), rng.randint(11, 97)
    return f"What is the remainder when {a} is divided by {b}?", a % b, f"print({a}%{b})"


def _two(rng: random.Random) -> tuple[int, int]:
    """Two operands of 2-4 digits: every two-number SFT task draws the same sizes, so the
    operand sizes never tell which operation a problem wants — only its words do."""
    return _n(rng, rng.randint(2, 4)), _n(rng, rng.randint(2, 4))


def _add(rng: random.Random) -> tuple[str, int, str]:
    a, b = _two(rng)
    return f"What is {a} plus {b}?", a + b, f"print({a}+{b})"


def _subtract(rng: random.Random) -> tuple[str, int, str]:
    a, b = _two(rng)
    return f"What is {a} minus {b}?", a - b, f"print({a}-{b})"


def _square(rng: random.Random) -> tuple[str, int, str]:
    a = _n(rng, rng.randint(2, 4))
    return f"What is the square of {a}?", a * a, f"print({a}*{a})"


def _rect_area(rng: random.Random) -> tuple[str, int, str]:
    a, b = _two(rng)
    return f"What is the area of a {a} by {b} rectangle?", a * b, f"print({a}*{b})"


UNKNOWN_WORDS = ("zorp", "blick", "frob", "wug")


def _unknown_op(rng: random.Random) -> tuple[str, int, str]:
    """A made-up operation word whose meaning the data does not fix: the code uses +, -
    or * uniformly at random. It teaches the format for a question the model cannot know
    the operation of — and so that such a question deserves a spread of guesses."""
    a, b = _two(rng)
    word = rng.choice(UNKNOWN_WORDS)
    op = rng.choice("+-*")
    val = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {word} {b}?", val, f"print({a}{op}{b})"


def _double(rng: random.Random) -> tuple[str, int, str]:
    a = _n(rng, rng.randint(3, 5))
    return f"What is twice {a}?", 2 * a, f"print(2*{a})"


# ---- the recovery family: code that needs an import or stdin parsing (issue #15)

FN_WORDS = ("glorp", "snib", "quax", "trell")  # made-up words for unknown_fn
_MATH_FN = {"comb": math.comb, "perm": math.perm, "gcd": math.gcd, "lcm": math.lcm}


def _pair_nk(rng: random.Random) -> tuple[int, int]:
    """(n, k), 12 ≤ n ≤ 80, 2 ≤ k ≤ 4: C(n, k) and P(n, k) are beyond a tiny model's mental
    arithmetic but short enough (≤ 8 digits) for it to copy from the tool's output. Only 207
    pairs exist: ``choose`` gives at most that many distinct problems."""
    return rng.randint(12, 80), rng.randint(2, 4)


def _gcd_pair(rng: random.Random) -> tuple[int, int]:
    g = rng.randint(6, 60)
    return g * rng.randint(11, 99), g * rng.randint(11, 99)


def _math_code(fn: str, a: int, b: int) -> str:
    return f"import math\nprint(math.{fn}({a}, {b}))"


def _gcd(rng: random.Random) -> tuple[str, int, str]:
    a, b = _gcd_pair(rng)
    return f"What is the greatest common divisor of {a} and {b}?", math.gcd(a, b), _math_code("gcd", a, b)


def _lcm(rng: random.Random) -> tuple[str, int, str]:
    a, b = _n(rng, rng.randint(2, 3)), _n(rng, 3)
    return f"What is the least common multiple of {a} and {b}?", math.lcm(a, b), _math_code("lcm", a, b)


def _arrange(rng: random.Random) -> tuple[str, int, str]:
    n, k = _pair_nk(rng)
    return (f"In how many ways can {k} of {n} books be arranged in a row?", math.perm(n, k),
            _math_code("perm", n, k))


def _choose(rng: random.Random) -> tuple[str, int, str]:
    n, k = _pair_nk(rng)
    return (f"In how many ways can {k} of {n} people be chosen?", math.comb(n, k),
            _math_code("comb", n, k))


def _unknown_fn(rng: random.Random) -> tuple[str, int, str]:
    """A made-up word whose code is math.comb / perm / gcd / lcm at random: puts
    ``math.comb`` in the SFT repertoire without tying it to any words."""
    fn = rng.choice(sorted(_MATH_FN))
    a, b = _gcd_pair(rng) if fn in ("gcd", "lcm") else _pair_nk(rng)
    return f"What is {a} {rng.choice(FN_WORDS)} {b}?", _MATH_FN[fn](a, b), _math_code(fn, a, b)


def _fractions(rng: random.Random) -> tuple[int, int, int, int]:
    """a/b and c/d whose sum and difference have a denominator of 12 or more (no 1/2 + 1/2)."""
    while True:
        b, d = rng.randint(3, 29), rng.randint(3, 29)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        if min((Fraction(a, b) + Fraction(c, d)).denominator, (Fraction(a, b) - Fraction(c, d)).denominator) >= 12:
            return a, b, c, d


def _frac_code(a: int, b: int, op: str, c: int, d: int) -> str:
    return f"from fractions import Fraction\nprint(Fraction({a}, {b}) {op} Fraction({c}, {d}))"


def _frac_sub(rng: random.Random) -> tuple[str, str, str]:
    a, b, c, d = _fractions(rng)
    return f"What is {a}/{b} minus {c}/{d}?", str(Fraction(a, b) - Fraction(c, d)), _frac_code(a, b, "-", c, d)


def _frac_add(rng: random.Random) -> tuple[str, str, str]:
    a, b, c, d = _fractions(rng)
    return f"What is {a}/{b} plus {c}/{d}?", str(Fraction(a, b) + Fraction(c, d)), _frac_code(a, b, "+", c, d)


def _stdin_code(op: str) -> str:
    return f"a, b = map(int, input().split())\nprint(a {op} b)"


def _input_sum(rng: random.Random) -> tuple[str, int, str, str]:
    a, b = _two(rng)
    return f"Read {a} {b} from the input and add them.", a + b, _stdin_code("+"), f"{a} {b}"


def _input_product(rng: random.Random) -> tuple[str, int, str, str]:
    a, b = _n(rng, 3), _n(rng, 3)
    return f"Read {a} {b} from the input and multiply them.", a * b, _stdin_code("*"), f"{a} {b}"


GENERATORS: dict[str, Generator] = {
    "multiply": _multiply,
    "multiply_large": _multiply_large,
    "mod": _mod,
    "add": _add,
    "subtract": _subtract,
    "square": _square,
    "double": _double,
    "rect_area": _rect_area,
    "unknown_op": _unknown_op,
    "gcd": _gcd,
    "lcm": _lcm,
    "arrange": _arrange,
    "choose": _choose,
    "unknown_fn": _unknown_fn,
    "frac_sub": _frac_sub,
    "frac_add": _frac_add,
    "input_sum": _input_sum,
    "input_product": _input_product,
}
RL_TASKS = ("multiply", "multiply_large", "mod")
SFT_TASKS = ("add", "subtract", "square", "double", "rect_area", "unknown_op")
RL_RECOVERY_TASKS = ("choose", "frac_add", "input_product")
SFT_RECOVERY_TASKS = ("add", "subtract", "unknown_op", "gcd", "lcm", "arrange", "unknown_fn",
                      "frac_sub", "input_sum")


def _check_tasks(tasks: list[str] | tuple[str, ...]) -> None:
    bad = [t for t in tasks if t not in GENERATORS]
    if bad or not tasks:
        raise ValueError(
            f"unknown procedural task(s) {bad or tasks!r}; available: {', '.join(GENERATORS)}"
        )


def generate_one(task: str, rng: random.Random) -> dict:
    """One problem of ``task`` drawn from ``rng`` (also carries the reference ``code``)."""
    _check_tasks([task])
    problem, answer, code, *stdin = GENERATORS[task](rng)
    item = {"problem": problem, "answer": str(answer), "source": f"procedural:{task}", "code": code}
    if stdin:
        item["input"] = stdin[0]
    return item


def generate(tasks: list[str] | tuple[str, ...], n: int, seed: int, prefix: str = "p") -> list[dict]:
    """``n`` problems mixing ``tasks`` round-robin, deterministic for ``seed``; distinct texts.

    Raises ``ValueError`` when the tasks cannot give ``n`` distinct problems."""
    _check_tasks(tasks)
    rng = random.Random(f"tirl-procedural-{seed}-{prefix}")
    out: list[dict] = []
    seen: set[str] = set()
    i = 0
    tries = 0
    while len(out) < n:
        item = generate_one(tasks[i % len(tasks)], rng)
        i += 1
        if item["problem"] in seen:
            tries += 1
            if tries > 100 * n + 1000:
                raise ValueError(
                    f"procedural tasks {list(tasks)} cannot give {n} distinct problems "
                    f"(about {len(out)} found); ask for fewer (data.size, data.held_out_size) or mix in more tasks"
                )
            continue
        seen.add(item["problem"])
        item["id"] = f"{prefix}{len(out)}"
        out.append(item)
    return out


def train_and_held_out(
    tasks: list[str] | tuple[str, ...], size: int, held_out_size: int, seed: int
) -> tuple[list[dict], list[dict]]:
    """Disjoint training and held-out sets (held-out problems never appear in training)."""
    held = generate(tasks, held_out_size, seed, prefix="held") if held_out_size else []
    held_texts = {p["problem"] for p in held}
    train = [p for p in generate(tasks, size + held_out_size, seed, prefix="train")
             if p["problem"] not in held_texts][:size]
    for i, p in enumerate(train):
        p["id"] = f"train{i}"
    return train, held
