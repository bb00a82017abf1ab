"""Sampling and grading one benchmark: k samples per problem through the agent loop.

:func:`run_benchmark` schedules every missing ``(problem, sample)`` pair as its own
trajectory on the same :class:`tirl.agent.loop.AgentLoop` that training uses (at most
``concurrency`` in flight), grades each one as it finishes, and appends its
:class:`~tirl.eval.samples.SampleRecord` to the store at once. Samples already in the
store are reused, so a rerun after an interruption only does the rest.

Grading follows training (rStar2-Agent §2.2.1): a truncated trajectory (turn limit,
token budget, engine stop) scores 0 whatever it wrote; a trajectory the engine or sandbox
failed is recorded as ``infra_error`` (scored 0 in the report, retried on the next run).

Seeding: given ``seed`` (the run's ``run.seed``), sample ``i`` of problem ``p`` of benchmark
``b`` gets the agent loop's base seed ``derive_seed("tirl-eval", seed, b, i)`` (and each of
its turns a seed below that, from the problem id: see ``AgentLoop.run``), so which random
numbers a sample draws depends on neither scheduling nor concurrency, and the same command
with the same seed gives the same samples with an engine that honours per-request seeds
(the in-process engine, vLLM, SGLang).

What it does not do: load problems, build engines or write reports (``tirl.eval.harness``,
``tirl.eval.report``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from tirl.agent.loop import derive_seed
from tirl.agent.trajectory import Trajectory
from tirl.data.benchmarks import problem_for_sample
from tirl.eval.samples import SampleRecord, SampleStore, reusable


class RolloutLoop(Protocol):
    """What the runner needs of ``tirl.agent.loop.AgentLoop``."""

    async def run(self, problem: str, *, n: int = 1, problem_id: str | None = None,
                  gold: str | None = None, seed: int | None = None) -> list[Trajectory]: ...


class AnswerGrader(Protocol):
    """What the runner needs of ``tirl.reward.Grader``."""

    async def grade(self, response_text: str, gold: str) -> Any: ...


class EvalAborted(RuntimeError):
    """Every sample so far failed with an exception: the engine or sandbox is not working."""


@dataclass
class BenchmarkRun:
    """What one :func:`run_benchmark` call did."""

    records: list[SampleRecord]  # k per problem, in problem order (missing ones absent)
    reused: int
    new: int
    failed: int  # samples that raised (recorded as infra_error)


def record_from_trajectory(
    benchmark: str, problem: dict, sample: int, traj: Trajectory, grade: Any, wall_s: float,
    keep_text: bool = True,
) -> SampleRecord:
    """Grade-and-trajectory → a record (truncation and infra failures override the grade)."""
    if traj.finish_reason == "infra_error" or (traj.has_infra_error and grade.status != "correct"):
        status = "infra_error"
    elif traj.truncated:
        status = "truncated"
    else:
        status = grade.status
    calls = traj.tool_calls
    infra_calls = sum(1 for c in calls if c.infra_failed)
    return SampleRecord(
        benchmark=benchmark,
        problem_id=str(problem["id"]),
        sample=sample,
        gold=str(problem["answer"]),
        status=status,
        correct=status == "correct",
        answer=getattr(grade, "extracted", None),
        finish_reason=traj.finish_reason,
        response_tokens=len(traj.response_ids),
        generated_tokens=traj.num_policy_tokens if traj.response_mask else len(traj.response_ids),
        turns=len(traj.turns),
        tool_calls=len(calls),
        # parse errors, exceptions, timeouts, limits; not the service's failures, not unrun calls
        tool_errors=sum(1 for c in calls if c.parse_error is not None
                        or (c.result is not None and not c.result.ok and not c.infra_failed)),
        infra_tool_errors=infra_calls,
        unexecuted_tool_calls=sum(1 for c in calls if c.parse_error is None and c.result is None),
        wall_s=round(wall_s, 3),
        error=traj.meta.get("error") if status == "infra_error" else None,
        text=traj.text if keep_text else None,
        meta=problem_meta(problem),
    )


BREAKDOWN_FIELDS = ("level", "subject", "category", "difficulty", "type")


def problem_meta(problem: dict) -> dict:
    """The problem's grouping fields (MATH-500 level/subject, CHAMP category) for breakdowns."""
    return {f: problem[f] for f in BREAKDOWN_FIELDS
            if isinstance(problem.get(f), (str, int)) and not isinstance(problem.get(f), bool)}


def sample_seed(seed: int, benchmark: str, sample: int) -> int:
    """The agent loop's base seed for sample ``sample`` of every problem of ``benchmark``
    (the loop mixes in the problem id): distinct per benchmark and sample index."""
    return derive_seed("tirl-eval", seed, benchmark, sample)


async def run_benchmark(
    benchmark: str,
    problems: Sequence[dict],
    loop: RolloutLoop,
    grader: AnswerGrader,
    store: SampleStore,
    k: int,
    *,
    concurrency: int = 64,
    keep_text: bool = True,
    on_sample: Callable[[SampleRecord, bool], None] | None = None,
    on_trajectory: Callable[[Trajectory], None] | None = None,
    abort_after_failures: int = 5,
    semaphore: asyncio.Semaphore | None = None,
    seed: int | None = None,
) -> BenchmarkRun:
    """Produce k graded samples per problem, reusing finished ones from ``store``.

    ``on_sample(record, reused)`` is called for every sample (reused ones first), for
    progress bars. ``semaphore`` (shared between benchmarks) replaces ``concurrency``. If the first ``abort_after_failures`` samples all raise, the run stops
    with :class:`EvalAborted` carrying the first error (a dead server, a wrong model name).
    ``seed`` (``run.seed``): seed every sample (:func:`sample_seed`); None leaves sampling
    unseeded (each run then draws different random numbers).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    saved = store.load(repair=True)  # a torn last line is cut off before we append
    done: dict[tuple[str, int], SampleRecord] = {}
    pending: list[tuple[dict, int]] = []
    for p in problems:
        for i in range(k):
            rec = saved.get((str(p["id"]), i))
            if rec is not None and reusable(rec, problem_for_sample(p, i, seed or 0)[1]):
                done[rec.key] = rec
            else:
                pending.append((p, i))
    reused = len(done)
    if on_sample is not None:
        for rec in done.values():
            on_sample(rec, True)

    # a shared semaphore lets several benchmarks run at once without exceeding the concurrency
    sem = semaphore if semaphore is not None else asyncio.Semaphore(max(1, concurrency))
    state = {"ok": 0, "failed": 0, "first_error": None}

    async def one(p: dict, i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                prompt, gold = problem_for_sample(p, i, seed or 0)  # GPQA: options shuffled per sample
                trajs = await loop.run(prompt, n=1, problem_id=str(p["id"]), gold=gold,
                                       seed=None if seed is None else sample_seed(seed, benchmark, i))
                traj = trajs[0]
                traj.meta.setdefault("sample", i)
                grade = await grader.grade(traj.text, gold)
                rec = record_from_trajectory(benchmark, {**p, "answer": gold}, i, traj, grade,
                                             time.perf_counter() - t0, keep_text)
                if on_trajectory is not None:
                    on_trajectory(traj)
                if rec.status == "infra_error":  # the loop caught an engine/sandbox failure
                    state["failed"] += 1
                    if state["first_error"] is None:
                        state["first_error"] = RuntimeError(rec.error or "infrastructure failure "
                                                            f"(finish reason {traj.finish_reason})")
                else:
                    state["ok"] += 1
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 — recorded, retried on the next run
                state["failed"] += 1
                if state["first_error"] is None:
                    state["first_error"] = err
                rec = SampleRecord(benchmark=benchmark, problem_id=str(p["id"]), sample=i,
                                   gold=problem_for_sample(p, i, seed or 0)[1], status="infra_error", correct=False,
                                   meta=problem_meta(p),
                                   wall_s=round(time.perf_counter() - t0, 3),
                                   error=f"{type(err).__name__}: {err}")
            store.append(rec)
            done[rec.key] = rec
            if on_sample is not None:
                on_sample(rec, False)
            if state["ok"] == 0 and state["failed"] >= abort_after_failures:
                err = state["first_error"]
                raise EvalAborted(
                    f"{benchmark}: the first {state['failed']} samples all failed; first error: "
                    f"{type(err).__name__}: {err}. Check the engine (--base-url / --model) and "
                    "the sandbox; finished samples are saved and a rerun resumes."
                ) from err

    tasks = [asyncio.create_task(one(p, i)) for p, i in pending]
    try:
        if tasks:
            # the first exception (EvalAborted) cancels the rest
            for fut in asyncio.as_completed(tasks):
                await fut
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        store.close()

    ordered = [done[(str(p["id"]), i)] for p in problems for i in range(k) if (str(p["id"]), i) in done]
    return BenchmarkRun(records=ordered, reused=reused, new=len(pending), failed=state["failed"])
