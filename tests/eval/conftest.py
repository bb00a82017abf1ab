"""Fixtures of the eval tests: the benchmark data dir, a scripted rollout loop, a grader."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tirl.agent.trajectory import ToolCall, Trajectory, Turn
from tirl.reward.types import Grade
from tirl.sandbox.types import ExecResult

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir() -> Path:
    """The benchmark files shipped in the repository (tirl/data/files)."""
    from tirl.data.benchmarks import DEFAULT_DATA_DIR

    assert (DEFAULT_DATA_DIR / "aime24.jsonl").is_file(), "the repo ships its benchmark files"
    return DEFAULT_DATA_DIR


class FakeLoop:
    """Stands in for AgentLoop: answers problem p's sample with ``answer_for(pid, j)``.

    j counts the calls made for a problem (0, 1, ...), so with k samples each problem gets
    the answers answer_for(pid, 0..k-1) in some order. ``gate_after``: calls beyond that
    number block until ``release`` is set (to simulate an interruption).
    """

    def __init__(self, answer_for, finish_for=None, gate_after: int | None = None, fail_for=None):
        self.answer_for = answer_for
        self.finish_for = finish_for or (lambda pid, j: "answer")
        self.fail_for = fail_for or (lambda pid, j: False)
        self.calls: list[tuple[str, int]] = []
        self.per_problem: dict[str, int] = {}
        self.gate_after = gate_after
        self.release = asyncio.Event()
        self.kwargs: list[dict] = []
        self.seeds: dict[tuple[str, int], int | None] = {}  # (problem id, call j) -> seed
        self.in_flight = 0
        self.max_in_flight = 0

    async def run(self, problem, *, n=1, problem_id=None, gold=None, seed=None):
        assert n == 1
        j = self.per_problem.get(problem_id, 0)
        self.seeds[problem_id, j] = seed
        self.per_problem[problem_id] = j + 1
        self.calls.append((problem_id, j))
        self.kwargs.append(dict(seed=seed))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate_after is not None and len(self.calls) > self.gate_after:
                await self.release.wait()
            await asyncio.sleep(0.001)
        finally:
            self.in_flight -= 1
        if self.fail_for(problem_id, j):
            raise ConnectionError("engine at http://127.0.0.1:1 refused the connection")
        ans = self.answer_for(problem_id, j)
        text = "<reason>thinking</reason>" + (f"<answer>\\boxed{{{ans}}}</answer>" if ans is not None else "")
        ok = ExecResult(status="ok", stdout="1\n")
        bad = ExecResult(status="error", stderr="ZeroDivisionError")
        turns = [Turn(text="<tool_call>..</tool_call>", tool_calls=[ToolCall(raw="a", result=ok),
                                                                    ToolCall(raw="b", result=bad)]),
                 Turn(text=text)]
        n_tok = 10 + 5 * j
        return [Trajectory(prompt_ids=[1, 2, 3], response_ids=list(range(n_tok)),
                           response_mask=[1] * (n_tok - 4) + [0] * 4, turns=turns,
                           finish_reason=self.finish_for(problem_id, j), text=text,
                           problem_id=problem_id, gold=gold)]


class FakeGrader:
    """Exact string match of the last \\boxed{} (the real Grader is tested in tests/reward)."""

    async def grade(self, text, gold):
        m = re.findall(r"\\boxed\{([^}]*)\}", text)
        if not m:
            return Grade("no_answer", None, gold)
        return Grade("correct" if m[-1] == gold else "incorrect", m[-1], gold)


@pytest.fixture
def fake_grader() -> FakeGrader:
    return FakeGrader()


class InProcessGrader:
    """The real verifier (tirl.reward.grade) without worker processes."""

    async def grade(self, text, gold):
        from tirl.reward import grade

        return grade(text, gold)
