"""Benchmark estimators: avg@k, unbiased pass@k, maj@k, and bootstrap intervals.

Pure functions over plain Python values (numpy only for the resampling); no I/O, no
models. Conventions, the same everywhere in tirl's reports:

* **avg@k** — the mean over problems of the fraction of a problem's k samples that are
  correct (the paper's "average pass@1", §5.1). Equal to pass@1 estimated from k samples.
* **pass@k** — the unbiased estimator of Chen et al. (2021, "Evaluating Large Language
  Models Trained on Code", Eq. 1): with n samples of which c are correct,
  ``pass@k = 1 - C(n-c, k) / C(n, k)``, computed as a product so it never overflows.
  k may be less than n (pass@1, pass@2, … from the same n samples).
* **maj@k** — majority voting over a problem's samples. Each sample votes with its final
  answer; all *correct* samples form one class (they are each equivalent to the reference,
  hence to each other); incorrect answers are grouped by a normalised string
  (:func:`normalize_answer`), so two spellings of the same wrong value may split their
  votes. Samples without a final answer (no ``\\boxed{}``, truncated, infrastructure
  failure) do not vote; a problem where nobody votes scores 0. A tie between the largest
  classes scores the *expected* value of a uniform random tie-break: 1/t when the correct
  class is one of the t tied classes, else 0 — deterministic and unbiased.
* **Intervals** — percentile bootstrap over *problems* (the problem set is the dominant
  source of variance on 30-problem benchmarks): resample problems with replacement,
  recompute the mean of the per-problem scores. Seeded, so reports are reproducible.
  :func:`paired_bootstrap` resamples the same problems for two runs (for ``compare``).

What this module does not do: decide whether an answer is correct (that is
``tirl.reward``) or read samples from disk (``tirl.eval.samples``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, Eq. 1).

    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which equals ``1 - C(n-c,k)/C(n,k)``.
    """
    if n < 1:
        raise ValueError(f"pass@k needs at least one sample per problem; got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be between 0 and n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n; got k={k} with n={n} samples")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of each problem's fraction of correct samples (avg@k)."""
    per = per_problem_accuracy(correct)
    return float(sum(per) / len(per)) if per else math.nan


def per_problem_accuracy(correct: Sequence[Sequence[bool]]) -> list[float]:
    out = []
    for i, row in enumerate(correct):
        if len(row) == 0:
            raise ValueError(f"problem #{i} has no samples; avg@k needs at least one")
        out.append(sum(bool(x) for x in row) / len(row))
    return out


def per_problem_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> list[float]:
    return [pass_at_k(len(row), sum(bool(x) for x in row), k) for row in correct]


def normalize_answer(ans: str) -> str:
    """A light normal form for grouping votes: no whitespace, ``$``, ``\\left``/``\\right``,
    ``\\!``, ``\\,``, trailing period; ``\\dfrac``/``\\tfrac`` as ``\\frac``."""
    s = ans.strip().strip("$").rstrip(".")
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
        s = s.replace(a, b)
    return "".join(s.split())


_CORRECT = "\x00correct"  # the vote key every correct sample shares


def majority_vote_score(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """maj@k of one problem: 1, 0 or 1/t on a t-way tie that includes the correct class.

    ``answers[i]`` is sample i's final answer (None = it gave none and does not vote);
    ``correct[i]`` whether it matched the reference.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    votes: Counter[str] = Counter()
    for a, ok in zip(answers, correct):
        if ok:
            votes[_CORRECT] += 1
        elif a is not None and normalize_answer(a) != "":
            votes[normalize_answer(a)] += 1
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [key for key, v in votes.items() if v == top]
    return 1.0 / len(tied) if _CORRECT in tied else 0.0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap interval (``lo``/``hi`` are None when not computed)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"72.5 [65.0, 80.0]"`` (percent by default)."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "–"
        v = f"{self.value * scale:.{digits}f}"
        if self.lo is None or self.hi is None:
            return v
        return f"{v} [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]"


def bootstrap_mean(
    values: Sequence[float], n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Estimate:
    """Mean of ``values`` with a percentile-bootstrap interval (resampling the values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(math.nan)
    mean = float(x.mean())
    if n_resamples <= 0:
        return Estimate(mean)
    means, lo, hi = _bootstrap_means(x, n_resamples, confidence, seed)
    return Estimate(mean, lo, hi)


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) - mean(b) over the same problems, with a paired-bootstrap interval.

    ``p_value`` is the two-sided bootstrap p-value of "no difference":
    ``2 * min(P*(d <= 0), P*(d >= 0))``, capped at 1 (None without resamples).
    """

    diff: float
    lo: float | None
    hi: float | None
    p_value: float | None
    n_problems: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0,
    confidence: float = 0.95,
) -> PairedDiff:
    """Difference of means of two aligned per-problem score lists (a[i], b[i] = problem i)."""
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(
            f"paired bootstrap needs the same problems in both runs; got {xa.size} and {xb.size}"
        )
    if xa.size == 0:
        return PairedDiff(math.nan, None, None, None, 0)
    d = xa - xb
    diff = float(d.mean())
    if n_resamples <= 0:
        return PairedDiff(diff, None, None, None, int(d.size))
    means, lo, hi = _bootstrap_means(d, n_resamples, confidence, seed)
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return PairedDiff(diff, lo, hi, p, int(d.size))


def _bootstrap_means(x: np.ndarray, n_resamples: int, confidence: float, seed: int
                     ) -> tuple[np.ndarray, float, float]:
    """Means of ``n_resamples`` seeded resamples of ``x`` (with replacement) and the
    central ``confidence`` interval of them."""
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    a = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return means, float(lo), float(hi)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")


def pass_k_levels(k: int) -> list[int]:
    """The k values a report shows pass@ at: 1, 2, 4, … up to k, and k itself."""
    levels, x = [], 1
    while x < k:
        levels.append(x)
        x *= 2
    levels.append(k)
    return levels
