"""Rollouts for one RL step: sample, grade, drop what carries no signal, resample on correct.

:func:`rollout_and_grade` runs ``n`` trajectories per problem through the agent loop and
grades them, and records in ``traj.meta["policy_version"]`` the weight version the
server stamped on its turns (the oldest; :func:`tirl.rl.staleness.trajectory_version`). A trajectory hit by an infrastructure failure (engine or sandbox down, a grader
worker that crashed) gets ``reward = None`` and is dropped — never rewarded 0. A truncated
trajectory (budget or turn limit without a final answer) gets 0 without grading.

:func:`collect_groups` is dynamic sampling (§2.2.3): groups whose rewards are all equal are
dropped and replaced by new problems (at most ``problems_per_step × max_refill_rounds``),
each replacement started the moment a group fails, and with GRPO-RoC each oversampled group
of 2G is cut to G by :func:`tirl.rl.grpo.resample_on_correct`.

What it does not do: compute advantages or losses (:mod:`tirl.rl.update`).
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tirl.agent.config import SamplingConfig
from tirl.rl.grpo import resample_on_correct, roc_penalty
from tirl.rl.staleness import trajectory_version


def assistant_text(traj) -> str:
    return "".join(t.text for t in traj.turns)


def _answers(traj) -> int:
    return sum(t.text.count("<answer>") for t in traj.turns)


def trajectory_penalty(traj) -> float:
    """RoC penalty from typed tool outcomes and exact counts (Eq. 5–6)."""
    return roc_penalty(traj.num_tool_calls, traj.num_tool_errors, _answers(traj), max(1, len(traj.turns)))


def format_penalty(traj) -> float:
    """p_format of Eq. 6: 1 without an <answer>, else (answers − 1) / turns, capped at 1."""
    n = _answers(traj)
    return 1.0 if n == 0 else min(1.0, (n - 1) / max(1, len(traj.turns)))


class Timings:
    """Seconds of one step spent generating and grading, as wall-clock time: an interval
    counts once however many problems run in it (problems run concurrently). ``tools`` is
    the sum of the tool calls' own times."""

    def __init__(self) -> None:
        self.tools = 0.0
        self._open = {"generation": [0, 0.0, 0.0], "grading": [0, 0.0, 0.0]}  # running, since, total

    @contextmanager
    def span(self, phase: str):
        """Count the time inside as ``phase`` ("generation" or "grading") — once, whatever else
        of that phase runs meanwhile."""
        st = self._open[phase]
        if st[0] == 0:
            st[1] = time.perf_counter()
        st[0] += 1
        try:
            yield
        finally:
            st[0] -= 1
            if st[0] == 0:
                st[2] += time.perf_counter() - st[1]

    def _seconds(self, phase: str) -> float:
        running, since, total = self._open[phase]
        return total + (time.perf_counter() - since if running else 0.0)

    @property
    def generation(self) -> float:
        return self._seconds("generation")

    @property
    def grading(self) -> float:
        return self._seconds("grading")


async def rollout_and_grade(loop, grader, problems: Sequence[dict], n: int, *, scorer: str = "math",
                            sampling: SamplingConfig | None = None, seed: int | None = None,
                            on_done: Callable | None = None, timings: Timings | None = None) -> list[list]:
    """``n`` graded trajectories per problem (``traj.reward``; None for infrastructure
    failures), grouped by problem. Each problem is judged by ``scorer_for(problem, scorer)``."""
    from tirl.reward.scorers import scorer_for

    timings = timings if timings is not None else Timings()
    with timings.span("generation"):
        trajs = await loop.run_many(problems, n=n, on_done=on_done, sampling=sampling, seed=seed)
    for t in trajs:  # the server-stamped version (inference servers); in-process: the trainer's
        v = trajectory_version(t)
        if v is not None:
            t.meta["policy_version"] = v
    timings.tools += sum(t.tool_ms for tr in trajs for t in tr.turns) / 1000.0
    to_grade = [i for i, t in enumerate(trajs) if not t.has_infra_error and not t.truncated]
    judges = [scorer_for(p, scorer) for p in problems]  # trajectories are grouped by problem
    with timings.span("grading"):
        grades = await grader.grade_batch([(assistant_text(trajs[i]), trajs[i].gold or "") for i in to_grade],
                                          scorers=[judges[i // n] for i in to_grade])
    for t in trajs:
        if t.has_infra_error:
            t.reward, t.grade_status = None, "infra_error"
        elif t.truncated:
            t.reward, t.grade_status = 0.0, "truncated"
    for i, g in zip(to_grade, grades):
        trajs[i].reward, trajs[i].grade_status = g.reward, g.status
    return [trajs[i * n:(i + 1) * n] for i in range(len(problems))]


@dataclass
class Collected:
    """What one step sampled: the kept groups and everything needed for its metrics."""

    groups: list[list] = field(default_factory=list)  # kept groups (G each with RoC)
    sampled: list = field(default_factory=list)  # every trajectory sampled, kept or not
    groups_sampled: int = 0
    groups_dropped: int = 0
    infra_dropped: int = 0
    refills: int = 0  # replacement problems started (dynamic sampling)


async def collect_groups(rollout: Callable, next_problems: Callable[[int], list[dict]], *, want: int,
                         group_size: int, algorithm: str, oversample: int, roc_mode: str,
                         min_pos: int, min_neg: int, dynamic_sampling: bool, max_refill_rounds: int,
                         rng: random.Random) -> Collected:
    """Groups with signal for one step (see the module docstring).

    ``rollout(problems, n, index)`` returns the graded groups of ``problems`` (here always one:
    the step's problem number ``index``, which seeds it); ``next_problems(k)`` the next ``k``
    problems of this rank. Each kept trajectory gets ``meta["kept"] = True`` and its
    ``meta["roc_penalty"]``; dropped ones ``meta["kept"] = False``.

    Every problem runs as soon as it is known: the step starts ``want`` at once, and each group
    that comes back without signal (all rewards equal, or fewer than two valid) starts a
    replacement at once — up to ``want × max_refill_rounds`` replacements, the problems that
    many full refill rounds would start — instead of waiting for a round's slowest group.
    Timing changes nothing: problem ``k`` of the step is the ``k``-th from ``next_problems``
    and each failed group starts exactly one more, so the problems run are the shortest
    prefix with ``want`` groups with signal (or the budget spent) whatever order they finish
    in; groups are kept, and RoC draws from ``rng``, in problem order.
    """
    n = group_size * (oversample if algorithm == "grpo_roc" else 1)
    budget = want * max_refill_rounds if dynamic_sampling else 0
    results: dict[int, list] = {}
    running: dict[asyncio.Task, int] = {}
    started = 0

    def start(k: int) -> None:
        nonlocal started
        for problem in next_problems(k):
            running[asyncio.ensure_future(rollout([problem], n, started))] = started
            started += 1

    def has_signal(g: list) -> bool:
        rewards = {t.reward for t in g if t.reward is not None}
        return sum(t.reward is not None for t in g) >= 2 and len(rewards) > 1

    try:
        start(want)
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            failed = 0
            for task in done:
                k = running.pop(task)
                (results[k],) = task.result()
                failed += not has_signal(results[k])
            more = min(failed, budget - (started - want))
            if more > 0:
                start(more)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    out = Collected(refills=started - want)
    for k in sorted(results):
        g = results[k]
        out.groups_sampled += 1
        out.sampled.extend(g)
        for t in g:
            t.meta["kept"] = False
        valid = [t for t in g if t.reward is not None]
        out.infra_dropped += len(g) - len(valid)
        if not has_signal(g):
            out.groups_dropped += 1
            continue
        rewards = [t.reward for t in valid]
        pens = [trajectory_penalty(t) for t in valid]
        for t, p in zip(valid, pens):
            t.meta["roc_penalty"] = p
        if algorithm == "grpo_roc":
            idx = resample_on_correct(rewards, pens, group_size, mode=roc_mode, min_pos=min_pos,
                                      min_neg=min_neg, rng=rng)
            valid = [valid[i] for i in idx]
        for t in valid:
            t.meta["kept"] = True
        out.groups.append(valid)
    return out


class ProblemOrder:
    """A shuffled pass over a problem pool, reshuffled each epoch; the position lives in
    the trainer state (``cursor``, ``epoch``) so a resume continues where it stopped."""

    def __init__(self, pool: list[dict], seed: int, stage_idx: int, state: Any):
        self.pool, self.seed, self.stage_idx, self.state = pool, seed, stage_idx, state
        self.order = self._shuffled()

    def _shuffled(self) -> list[int]:
        order = list(range(len(self.pool)))
        random.Random(f"tirl-order-{self.seed}-{self.stage_idx}-{self.state.epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[dict]:
        out = []
        for _ in range(k):
            if self.state.cursor >= len(self.order):
                self.state.epoch += 1
                self.state.cursor = 0
                self.order = self._shuffled()
            out.append(self.pool[self.order[self.state.cursor]])
            self.state.cursor += 1
        return out
