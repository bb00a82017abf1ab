"""Per-source judges: which scorer grades a problem, and reasoning-gym's own scorers.

A scorer is named per item. ``"math"`` (the default) means: extract the ``\\boxed{}``
answer and check mathematical equivalence with the reference. ``"reasoning_gym:<dataset>"``
means the problem came from reasoning-gym's ``<dataset>`` generator, whose
``score_answer(answer, entry)`` is the judge (some answers — a list of roots, a word, a
factorisation ``5 × 7 × 7`` — are not single math objects). The entry is the generator's
item (``question``, ``answer``, ``metadata``); with only the reference answer, the entry is
``{"answer": gold}``, enough for the many datasets that compare answers directly.
reasoning-gym scores in [0, 1] (partial credit); the reward is binary, so only a score of
1 is correct, and the score is kept in ``Grade.detail``.

The trainer passes scorers per item: ``grader.grade_batch(items,
scorers=[scorer_for(p, cfg.reward.scorer) for p in problems])``. What this module does not
do: run scorers under a time limit (the grader runs them in its worker processes) or
install reasoning-gym datasets.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from tirl.reward.extract import extract_answer, final_answer_block

_RG = re.compile(r"^(?:reasoning[_-]gym|rg)[:/](?P<dataset>[A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class Scorer:
    """Which judge grades an item: ``name`` is ``"math"``, ``"reasoning_gym:<dataset>"`` or
    ``"custom"``; ``entry`` is the generator's item for a reasoning-gym scorer; ``fn`` is a
    custom judge ``fn(answer, gold, entry) -> float`` (a module-level function, since it
    runs in a worker process; 1.0 = correct)."""

    name: str = "math"
    entry: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    fn: Callable[[str, str, dict | None], float] | None = field(default=None, compare=False)

    @property
    def dataset(self) -> str | None:
        m = _RG.match(self.name)
        return m.group("dataset") if m else None


MATH = Scorer("math")


def as_scorer(spec: str | Scorer | dict | None) -> Scorer:
    """A ``Scorer`` from ``None``/``"math"``, ``"reasoning_gym:<dataset>"``, a ``Scorer`` or a
    dict ``{"name": ..., "entry": ...}``; raises ``ValueError`` naming a bad spec."""
    if spec is None:
        return MATH
    if isinstance(spec, Scorer):
        s = spec
    elif isinstance(spec, str):
        s = Scorer(spec)
    elif isinstance(spec, dict) and "name" in spec:
        s = Scorer(str(spec["name"]), spec.get("entry"))
    else:
        raise ValueError(f"scorer must be None, a name or a Scorer, got {spec!r}")
    if s.fn is not None:
        return s
    if s.name != "math" and s.dataset is None:
        raise ValueError(f"unknown scorer {s.name!r}: use 'math' or 'reasoning_gym:<dataset>' "
                         "(a reasoning-gym dataset name such as 'basic_arithmetic')")
    return s


def scorer_for(problem: dict[str, Any], mode: str = "source") -> Scorer:
    """The scorer for a problem dict (``{"id", "problem", "answer", "source", ...}``).

    With ``mode="source"`` (``[reward] scorer = "source"``), a problem from reasoning-gym is
    judged by its generator: ``source`` is ``reasoning_gym:<dataset>`` (or
    ``reasoning-gym/<dataset>``), or just ``reasoning_gym`` with the dataset in
    ``metadata.source_dataset`` (as reasoning-gym's own entries have it). The entry is
    ``problem["entry"]`` or one built from ``problem``, ``answer`` and ``metadata``. Any
    other problem, and every problem with ``mode="math"``, gets math equivalence.
    """
    if mode == "math":
        return MATH
    if mode != "source":
        raise ValueError(f"scorer mode must be 'math' or 'source', got {mode!r}")
    src = str(problem.get("source") or "")
    entry = problem.get("entry")
    meta = problem.get("metadata") or (entry or {}).get("metadata") or {}
    m = _RG.match(src)
    if m is not None:
        dataset = m.group("dataset")
    elif src.replace("-", "_") in ("reasoning_gym", "rg") and meta.get("source_dataset"):
        dataset = str(meta["source_dataset"])
    else:
        return MATH
    if entry is None:
        entry = {"question": problem.get("problem", ""), "answer": str(problem.get("answer", "")),
                 "metadata": meta}
    return Scorer(f"reasoning_gym:{dataset}", entry)


@functools.lru_cache(maxsize=64)
def _score_fn(dataset: str):
    import reasoning_gym

    try:
        return reasoning_gym.get_score_answer_fn(dataset)
    except ValueError as err:
        raise ValueError(f"reasoning-gym has no dataset {dataset!r} ({err}); check the "
                         "problem's source field") from err


def answer_for_source(response_text: str) -> str | None:
    """The answer a generator's scorer sees: the boxed answer, else the whole final
    ``<answer>`` block (reasoning-gym's own format has no box)."""
    ans = extract_answer(response_text)
    if ans is not None:
        return ans
    block = final_answer_block(response_text)
    return block.strip() or None if block is not None else None


def source_score(dataset: str, answer: str, entry: dict[str, Any]) -> float:
    """reasoning-gym's score of ``answer`` for ``entry`` (in [0, 1])."""
    return float(_score_fn(dataset)(answer, entry))
