"""record_from_trajectory: how a trajectory and its grade become a sample record."""

from __future__ import annotations

import pytest

from tirl.agent.trajectory import ToolCall, Trajectory, Turn
from tirl.eval.report import summarize
from tirl.eval.runner import record_from_trajectory
from tirl.eval.samples import SampleRecord, SampleStore
from tirl.reward.types import Grade
from tirl.sandbox.types import ExecResult

PROBLEM = {"id": "p1", "problem": "?", "answer": "42", "level": 3, "source": "x"}


def traj(calls, finish="answer"):
    return Trajectory(prompt_ids=[1], response_ids=[5, 6, 7, 8], response_mask=[1, 1, 0, 1],
                      turns=[Turn(text="t", tool_calls=calls), Turn(text="a")], finish_reason=finish,
                      text="<answer>\\boxed{42}</answer>")


def test_tool_counts_blame_only_the_model():
    calls = [ToolCall(raw="ok", result=ExecResult(status="ok")),
             ToolCall(raw="err", result=ExecResult(status="error")),
             ToolCall(raw="bad json", parse_error="invalid JSON"),
             ToolCall(raw="svc", result=ExecResult(status="infra_error", reason="queue_full")),
             ToolCall(raw="unrun")]  # recorded at the turn limit, never executed
    rec = record_from_trajectory("b", PROBLEM, 0, traj(calls), Grade("correct", "42", "42"), 1.0)
    assert (rec.tool_calls, rec.tool_errors, rec.infra_tool_errors, rec.unexecuted_tool_calls) == (5, 2, 1, 1)
    # a correct answer despite a sandbox hiccup stays correct
    assert rec.status == "correct" and rec.correct and rec.answer == "42"
    assert (rec.response_tokens, rec.generated_tokens, rec.turns) == (4, 3, 2)
    assert rec.meta == {"level": 3}
    s = summarize("b", [rec], k=1, n_boot=0)
    assert s.tool_error_rate == pytest.approx(2 / 3)  # 2 failures among the 3 calls it answers for


@pytest.mark.parametrize("finish,grade,status", [
    ("max_tokens", "correct", "truncated"),      # a truncated rollout scores 0 (§2.2.1)
    ("max_turns", "correct", "truncated"),
    ("engine_stop", "incorrect", "truncated"),
    ("infra_error", "correct", "infra_error"),   # retried on the next run
    ("answer", "no_answer", "no_answer"),
    ("answer", "timeout", "timeout"),
])
def test_status_rules(finish, grade, status):
    rec = record_from_trajectory("b", PROBLEM, 0, traj([], finish), Grade(grade, "42", "42"), 0.0)
    assert rec.status == status and rec.correct == (status == "correct")


def test_infra_tool_failure_with_a_wrong_answer_is_retried_not_blamed():
    calls = [ToolCall(raw="svc", result=ExecResult(status="infra_error"))]
    rec = record_from_trajectory("b", PROBLEM, 0, traj(calls), Grade("incorrect", "7", "42"), 0.0)
    assert rec.status == "infra_error"


def test_store_skips_a_torn_line_and_keeps_the_last_record(tmp_path):
    path = tmp_path / "s.jsonl"
    store = SampleStore(path)
    a = SampleRecord("b", "p1", 0, "42", "incorrect", False, answer="7")
    store.append(a)
    store.close()
    with path.open("a") as f:
        f.write('{"benchmark": "b", "problem_id": "p1", "sam')  # a crash mid-write
    store.append(SampleRecord("b", "p1", 0, "42", "correct", True, answer="42"))
    store.append(SampleRecord("b", "p1", 1, "42", "no_answer", False))
    store.close()
    loaded = SampleStore(path).load()
    assert set(loaded) == {("p1", 0), ("p1", 1)}
    assert loaded[("p1", 0)].status == "correct"


def test_compare_pairs_common_problems_and_counts_the_rest(tmp_path):
    from tirl.eval.compare import compare_runs, comparison_markdown

    def write(run, rows):
        store = SampleStore(tmp_path / run / "samples" / "bench.jsonl")
        for pid, i, ok in rows:
            store.append(SampleRecord("bench", pid, i, "1", "correct" if ok else "incorrect", ok,
                                      answer="1" if ok else "2"))
        store.close()

    # A: p1 2/2, p2 0/2, p3 1/2 (only in A); B: p1 1/2, p2 1/2, p4 2/2 (only in B)
    write("a", [("p1", 0, 1), ("p1", 1, 1), ("p2", 0, 0), ("p2", 1, 0), ("p3", 0, 1), ("p3", 1, 0)])
    write("b", [("p1", 0, 1), ("p1", 1, 0), ("p2", 0, 0), ("p2", 1, 1), ("p4", 0, 1), ("p4", 1, 1)])
    rows, sa, sb = compare_runs(tmp_path / "a", tmp_path / "b", 200, 0)
    r = rows[0]
    assert (r.problems, r.only_a, r.only_b, r.k_a, r.k_b) == (2, 1, 1, 2, 2)
    assert (r.avg_a, r.avg_b) == (0.5, 0.5)  # p1, p2 only
    assert r.avg_diff.diff == 0.0 and r.avg_diff.lo < 0 < r.avg_diff.hi
    # maj: A p1 right (2-0), p2 wrong; B p1 tie 1-1 -> 1/2, p2 tie -> 1/2
    assert (r.maj_a, r.maj_b) == (0.5, 0.5)
    md = comparison_markdown(rows, "a", "b", sa, sb)
    assert "| bench | 2 |" in md and "1 problems only in A, 1 only in B" in md
