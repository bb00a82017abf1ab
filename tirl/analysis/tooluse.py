"""Tool-use statistics of saved trajectories: calls, error kinds, recovery, turns to answer.

Works on three kinds of record, all as plain dicts (so unknown extra fields — ``step``,
``stage``, ``kept``, ``advantage`` … written by the trainer — are simply carried along):

* a training or eval trajectory (:meth:`tirl.agent.trajectory.Trajectory.to_dict`): exact
  per-call outcomes; an ``error`` is refined to the exception type read from the traceback's
  last line (``error:NameError``);
* an eval sample (:class:`tirl.eval.samples.SampleRecord`): counts only (``tool_calls``,
  ``tool_errors``, ``turns``); when the response text was kept, the call outcomes are read
  back from its ``<tool_response>`` blocks.

Definitions (used by the report and by ``benchmarks/roc_ablation.py``):

* **recovery rate**: of trajectories with at least one failed call, the fraction whose final
  answer is correct (the failure was recovered from);
* **call recovery rate**: of the same, the fraction with a *successful* call after the first
  failed one (the tool was got working again, whatever the answer);
* **turns to answer**: assistant turns of trajectories that ended with an answer.

What it does not do: read files (:mod:`tirl.analysis.load`) or plot (:mod:`tirl.analysis.report`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

_EXC_RE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\b")
_RESP_RE = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.DOTALL)


@dataclass
class TrajToolStats:
    calls: int
    failed: int
    kinds: list[str]  # one per failed call
    outcomes: list[bool]  # per call in order: True = ran fine
    correct: bool | None  # None when the record has no grade
    turns: int
    answered: bool  # ended with an answer (not cut by a limit)
    step: Any = None  # the training step (or a label) the record belongs to
    response_len: int | None = None  # policy tokens
    extra: dict = field(default_factory=dict)

    @property
    def has_failure(self) -> bool:
        return self.failed > 0

    @property
    def call_recovered(self) -> bool:
        """A successful call after the first failed one."""
        if False not in self.outcomes:
            return False
        return True in self.outcomes[self.outcomes.index(False) + 1:]


def exception_kind(stderr: str | None) -> str | None:
    """The exception type of a traceback's last ``Type: message`` line (None if none)."""
    for line in reversed((stderr or "").strip().splitlines()):
        m = _EXC_RE.match(line.strip())
        if m:
            return m.group(1).rsplit(".", 1)[-1]
    return None


def _call_outcome(call: dict) -> tuple[bool, str | None]:
    """(ran fine, failure kind) of one saved ToolCall dict."""
    res = call.get("result")
    if call.get("parse_error") is not None or call.get("error_kind") is not None:
        return False, call.get("error_kind") or "parse_error"
    if res is None:
        return False, "not_executed"
    status = res.get("status", "ok")
    if status == "ok":
        return True, None
    if status == "error":
        exc = exception_kind(res.get("stderr"))
        return False, f"error:{exc}" if exc else "error"
    return False, status


def _kind_from_body(body: str) -> str | None:
    """Failure kind of one tool response body as rendered by tirl.agent.format (None = ok)."""
    head = body.strip().splitlines()[0] if body.strip() else ""
    if head.startswith("Execution succeeded"):
        return None
    if head.startswith("Tool call error"):
        return "parse_error"
    if head.startswith("Execution failed"):
        exc = exception_kind(body)
        return f"error:{exc}" if exc else "error"
    for prefix, kind in (("Execution timed out", "timeout"), ("Execution ran out of memory", "memory"),
                         ("Execution stopped: output too long", "output_limit"),
                         ("Execution was killed", "killed"), ("The code execution service failed", "infra_error")):
        if head.startswith(prefix):
            return kind
    return "unknown"


def trajectory_stats(rec: Any) -> TrajToolStats:
    """Tool statistics of one record: a Trajectory, its dict, or an eval sample dict."""
    if not isinstance(rec, dict):
        rec = rec.to_dict()
    step = rec.get("step", rec.get("_label"))
    if "turns" in rec and isinstance(rec["turns"], list):  # a trajectory
        outcomes, kinds = [], []
        for turn in rec["turns"]:
            for call in turn.get("tool_calls", []):
                ok, kind = _call_outcome(call)
                outcomes.append(ok)
                if not ok:
                    kinds.append(kind or "error")
        reward = rec.get("reward")
        mask = rec.get("response_mask")
        return TrajToolStats(
            calls=len(outcomes), failed=len(kinds), kinds=kinds, outcomes=outcomes,
            correct=None if reward is None else reward == 1.0, turns=len(rec["turns"]),
            answered=rec.get("finish_reason") == "answer", step=step,
            response_len=sum(mask) if mask is not None else None)
    # an eval sample record
    text = rec.get("text")
    if text:
        bodies = _RESP_RE.findall(text)
        kinds_all = [_kind_from_body(b) for b in bodies]
        outcomes = [k is None for k in kinds_all]
        kinds = [k for k in kinds_all if k is not None]
        unexec = int(rec.get("unexecuted_tool_calls", 0))
        outcomes += [False] * unexec
        kinds += ["not_executed"] * unexec
    else:
        n, f = int(rec.get("tool_calls", 0)), int(rec.get("tool_errors", 0))
        outcomes = [True] * (n - f) + [False] * f  # order unknown: call recovery not judged
        kinds = ["unknown"] * f
    return TrajToolStats(
        calls=len(outcomes), failed=len(kinds), kinds=kinds, outcomes=outcomes if text else [],
        correct=rec.get("correct"), turns=int(rec.get("turns", 0)),
        answered=rec.get("finish_reason") == "answer", step=step,
        response_len=rec.get("generated_tokens"))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(stats: Iterable[TrajToolStats]) -> dict[str, Any]:
    """Aggregate tool-use numbers of a set of trajectories (None where undefined)."""
    stats = list(stats)
    calls = sum(s.calls for s in stats)
    failed = sum(s.failed for s in stats)
    pos = [s for s in stats if s.correct]
    pcalls = sum(s.calls for s in pos)
    with_fail = [s for s in stats if s.has_failure]
    graded_fail = [s for s in with_fail if s.correct is not None]
    ordered_fail = [s for s in with_fail if s.outcomes]
    graded = [s for s in stats if s.correct is not None]
    lens = [s.response_len for s in stats if s.response_len is not None]
    return {
        "trajectories": len(stats),
        "accuracy": _mean([1.0 if s.correct else 0.0 for s in graded]),
        "calls_per_traj": calls / len(stats) if stats else None,
        "tool_error_ratio": failed / calls if calls else None,
        "tool_error_ratio_pos": sum(s.failed for s in pos) / pcalls if pcalls else None,
        "frac_with_failure": len(with_fail) / len(stats) if stats else None,
        "recovery_rate": _mean([1.0 if s.correct else 0.0 for s in graded_fail]),
        "call_recovery_rate": _mean([1.0 if s.call_recovered else 0.0 for s in ordered_fail]),
        "turns_to_answer": _mean([float(s.turns) for s in stats if s.answered]),
        "response_len": _mean([float(x) for x in lens]),
        "error_kinds": dict(Counter(k for s in stats for k in s.kinds).most_common()),
    }


def summarize_by_step(stats: Iterable[TrajToolStats]) -> list[tuple[Any, dict[str, Any]]]:
    """:func:`summarize` per ``step`` value, in order of first appearance (numbers sorted)."""
    groups: dict[Any, list[TrajToolStats]] = {}
    for s in stats:
        groups.setdefault(s.step, []).append(s)
    keys = list(groups)
    if all(isinstance(k, (int, float)) for k in keys):
        keys.sort()
    return [(k, summarize(groups[k])) for k in keys]
