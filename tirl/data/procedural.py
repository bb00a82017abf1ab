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

A problem is a dict ``{"id", "problem", "answer", "source"}`` (docs/interfaces.md).
Training and held-out sets are drawn from disjoint streams and held-out problems are
removed from training, so evaluation never sees a training problem.

What it does not do: natural-language variety (one template per task) or reasoning-gym
(``data.source = "reasoning_gym"`` in the trainer goes through that package instead).
"""

from __future__ import annotations

import random
from typing import Callable

Generator = Callable[[random.Random], tuple[str, int, str]]  # (problem, answer, python code)


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
}
RL_TASKS = ("multiply", "multiply_large", "mod")
SFT_TASKS = ("add", "subtract", "square", "double", "rect_area", "unknown_op")


def _check_tasks(tasks: list[str] | tuple[str, ...]) -> None:
    bad = [t for t in tasks if t not in GENERATORS]
    if bad or not tasks:
        raise ValueError(
            f"unknown procedural task(s) {bad or tasks!r}; available: {', '.join(GENERATORS)}"
        )


def generate_one(task: str, rng: random.Random) -> dict:
    """One problem of ``task`` drawn from ``rng`` (also carries the reference ``code``)."""
    _check_tasks([task])
    problem, answer, code = GENERATORS[task](rng)
    return {"problem": problem, "answer": str(answer), "source": f"procedural:{task}", "code": code}


def generate(tasks: list[str] | tuple[str, ...], n: int, seed: int, prefix: str = "p") -> list[dict]:
    """``n`` problems mixing ``tasks`` round-robin, deterministic for ``seed``; distinct texts."""
    _check_tasks(tasks)
    rng = random.Random(f"tirl-procedural-{seed}-{prefix}")
    out: list[dict] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        item = generate_one(tasks[i % len(tasks)], rng)
        i += 1
        if item["problem"] in seen:
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
