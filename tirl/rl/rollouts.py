"""Rollouts for one RL step: sample, grade, drop what carries no signal, resample on correct.

:func:`rollout_and_grade` runs ``n`` trajectories per problem through the agent loop and
grades them, and records in ``traj.meta["policy_version"]`` the weight version the
server stamped on its turns (the oldest; :func:`tirl.rl.staleness.trajectory_version`). A trajectory hit by an infrastructure failure (engine or sandbox down, a grader
worker that crashed) gets ``reward = None`` and is dropped — never rewarded 0. A truncated
trajectory (budget or turn limit without a final answer) gets 0 without grading.

:func:`collect_groups` is dynamic sampling (§2.2.3): groups whose rewards are all equal are
dropped and replaced by new problems (up to ``max_refill_rounds``), and with GRPO-RoC each
oversampled group of 2G is cut to G by :func:`tirl.rl.grpo.resample_on_correct`.

What it does not do: compute advantages or losses (:mod:`tirl.rl.update`).
"""

from __future__ import annotations

import random
import time
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


@dataclass
class Timings:
    generation: float = 0.0
    tools: float = 0.0
    grading: float = 0.0


async def rollout_and_grade(loop, grader, problems: Sequence[dict], n: int, *, scorer: str = "math",
                            sampling: SamplingConfig | None = None, seed: int | None = None,
                            on_done: Callable | None = None, timings: Timings | None = None) -> list[list]:
    """``n`` graded trajectories per problem (``traj.reward``; None for infrastructure
    failures), grouped by problem. Each problem is judged by ``scorer_for(problem, scorer)``."""
    from tirl.reward.scorers import scorer_for

    timings = timings if timings is not None else Timings()
    t0 = time.perf_counter()
    trajs = await loop.run_many(problems, n=n, on_done=on_done, sampling=sampling, seed=seed)
    timings.generation += time.perf_counter() - t0
    for t in trajs:  # the server-stamped version (inference servers); in-process: the trainer's
        v = trajectory_version(t)
        if v is not None:
            t.meta["policy_version"] = v
    timings.tools += sum(t.tool_ms for tr in trajs for t in tr.turns) / 1000.0
    t1 = time.perf_counter()
    to_grade = [i for i, t in enumerate(trajs) if not t.has_infra_error and not t.truncated]
    judges = [scorer_for(p, scorer) for p in problems]  # trajectories are grouped by problem
    grades = await grader.grade_batch([(assistant_text(trajs[i]), trajs[i].gold or "") for i in to_grade],
                                      scorers=[judges[i // n] for i in to_grade])
    for t in trajs:
        if t.has_infra_error:
            t.reward, t.grade_status = None, "infra_error"
        elif t.truncated:
            t.reward, t.grade_status = 0.0, "truncated"
    for i, g in zip(to_grade, grades):
        trajs[i].reward, trajs[i].grade_status = g.reward, g.status
    timings.grading += time.perf_counter() - t1
    return [trajs[i * n:(i + 1) * n] for i in range(len(problems))]


@dataclass
class Collected:
    """What one step sampled: the kept groups and everything needed for its metrics."""

    groups: list[list] = field(default_factory=list)  # kept groups (G each with RoC)
    sampled: list = field(default_factory=list)  # every trajectory sampled, kept or not
    groups_sampled: int = 0
    groups_dropped: int = 0
    infra_dropped: int = 0
    refill_rounds: int = 0


async def collect_groups(rollout: Callable, next_problems: Callable[[int], list[dict]], *, want: int,
                         group_size: int, algorithm: str, oversample: int, roc_mode: str,
                         min_pos: int, min_neg: int, dynamic_sampling: bool, max_refill_rounds: int,
                         rng: random.Random) -> Collected:
    """Groups with signal for one step (see the module docstring).

    ``rollout(problems, n, round)`` returns graded groups; ``next_problems(k)`` the next
    ``k`` problems of this rank. Each kept trajectory gets ``meta["kept"] = True`` and its
    ``meta["roc_penalty"]``; dropped ones ``meta["kept"] = False``.
    """
    n = group_size * (oversample if algorithm == "grpo_roc" else 1)
    out = Collected()
    rounds = 0
    while len(out.groups) < want:
        groups = await rollout(next_problems(want - len(out.groups)), n, rounds)
        for g in groups:
            out.groups_sampled += 1
            out.sampled.extend(g)
            for t in g:
                t.meta["kept"] = False
            valid = [t for t in g if t.reward is not None]
            out.infra_dropped += len(g) - len(valid)
            rewards = [t.reward for t in valid]
            if len(valid) < 2 or len(set(rewards)) == 1:
                out.groups_dropped += 1
                continue
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
            if len(out.groups) >= want:
                break
        rounds += 1
        if not dynamic_sampling or rounds > max_refill_rounds:
            break
    out.refill_rounds = rounds - 1
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
