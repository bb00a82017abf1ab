"""Trajectories: what one multi-turn rollout produced, token-exact (docs/architecture.md, Agent and engines).

``response_ids`` is everything after the prompt: the model's sampled tokens (mask 1) and
the tool-response / template tokens the loop inserted (mask 0). ``logprobs`` has one entry
per response token (0.0 where mask is 0). Turns keep the text, tool calls and typed sandbox
results for penalties (RoC), metrics and inspection.

Truncation (reward 0, rStar2-Agent §2.1) is defined here, once: ``max_tokens`` and
``engine_stop`` (the context limit) always truncate; ``max_turns`` truncates unless the last
turn holds a complete final answer — an ``<answer>…</answer>`` block, closed, with a
well-formed ``\\boxed{…}`` inside, outside tool calls — which is then graded (as the
release does). Tool calls recorded in that last turn were never run: they count neither as
answered calls nor as failures (:attr:`Trajectory.num_unexecuted_calls` counts them).

What it does not do: grade (``tirl.reward``) or decide how a trajectory ends (the loop).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from tirl.sandbox.types import ExecResult

TrajectoryFinish = Literal[
    "answer",  # a turn without a tool call ended it (the normal end)
    "max_turns",  # the turn limit was reached (truncated unless the last turn answered)
    "max_tokens",  # the shared token budget ran out (truncated: reward 0)
    "engine_stop",  # the engine hit its context limit (truncated: reward 0)
    "infra_error",  # the engine (abort, lost connection, server error) or sandbox failed;
    # never the policy's fault: dropped by the trainer, never rewarded 0
]

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _closing_brace(text: str, open_at: int) -> int:
    """Index of the ``}`` matching the ``{`` at ``open_at``, or -1 (escaped braces do not count)."""
    depth, i = 0, open_at
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return i
        i += 1
    return -1


def has_complete_answer(text: str) -> bool:
    """True when the final ``<answer>`` of ``text`` (one assistant turn) is closed by
    ``</answer>`` and holds a non-empty, closed ``\\boxed{…}``. Text inside tool calls is
    code, not the model's answer, and is ignored."""
    own = _TOOL_CALL_BLOCK.sub(" ", text)
    start = own.rfind("<answer>")
    if start < 0:
        return False
    end = own.find("</answer>", start)
    if end < 0:
        return False
    block = own[start + len("<answer>"):end]
    for m in _BOX_OPEN.finditer(block):
        brace = m.end() - 1
        close = _closing_brace(block, brace)
        if close > 0 and block[brace + 1:close].strip():
            return True
    return False


@dataclass
class ToolCall:
    """One parsed (or unparseable) tool call in an assistant turn."""

    raw: str  # the text between <tool_call> and </tool_call>
    name: str | None = None
    arguments: dict[str, Any] | None = None
    parse_error: str | None = None  # set when the call could not be parsed
    result: ExecResult | None = None  # None when not executed (parse error)
    # parse_error | missing_field | unknown_tool | None
    error_kind: str | None = None
    tool_ms: float = 0.0  # wall time of this call as the loop saw it (queue + execution)

    @property
    def executed(self) -> bool:
        """Answered: run by the tool, or rejected by the parser (the model read an error).

        False only for a call recorded but never run (the last turn at the turn limit).
        """
        return self.parse_error is not None or self.result is not None

    @property
    def failed(self) -> bool:
        """Counts as a failed call for p_err (Eq. 5): a parse error, or not status ok.

        A call that was never executed is not a failure. ``infra_error`` results are the
        service's fault: callers that score the policy must check ``infra_failed`` first
        and not blame it.
        """
        return self.parse_error is not None or (self.result is not None and not self.result.ok)

    @property
    def infra_failed(self) -> bool:
        return self.result is not None and self.result.status == "infra_error"

    @property
    def failure_kind(self) -> str | None:
        """None for a successful or never-executed call; else the parse error kind or the
        result's status."""
        if self.error_kind is not None:
            return self.error_kind
        if self.result is None:
            return None
        return None if self.result.ok else self.result.status


@dataclass
class Turn:
    text: str  # the assistant's text of this turn
    tool_calls: list[ToolCall] = field(default_factory=list)
    gen_ms: float = 0.0
    tool_ms: float = 0.0
    n_generated: int = 0
    n_tool_tokens: int = 0
    finish: str | None = None  # the engine's finish reason for this turn (stop / length / abort)
    weight_version: str | None = None  # the policy version that generated it (the oldest, if it spanned an update)


@dataclass
class Trajectory:
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    finish_reason: TrajectoryFinish | None = None
    text: str = ""  # the whole response as text (for grading and reading)
    problem_id: str | None = None
    gold: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reward: float | None = None
    grade_status: str | None = None

    # ---- counts used by RoC penalties and metrics ----
    @property
    def tool_calls(self) -> list[ToolCall]:
        """Every call written, including those recorded but never run."""
        return [c for t in self.turns for c in t.tool_calls]

    @property
    def num_tool_calls(self) -> int:
        """Calls answered (run, or rejected by the parser): the denominator of p_err (Eq. 5)."""
        return sum(1 for c in self.tool_calls if c.executed)

    @property
    def num_unexecuted_calls(self) -> int:
        """Calls recorded but never run (the last turn at the turn limit)."""
        return sum(1 for c in self.tool_calls if not c.executed)

    @property
    def num_tool_errors(self) -> int:
        return sum(1 for c in self.tool_calls if c.failed)

    @property
    def tool_errors_by_kind(self) -> dict[str, int]:
        """Failed calls counted by kind (parse_error, missing_field, unknown_tool, error, timeout, ...)."""
        out: dict[str, int] = {}
        for c in self.tool_calls:
            k = c.failure_kind
            if k is not None:
                out[k] = out.get(k, 0) + 1
        return out

    @property
    def has_infra_error(self) -> bool:
        return self.finish_reason == "infra_error" or any(c.infra_failed for c in self.tool_calls)

    @property
    def truncated(self) -> bool:
        """Reward 0 without grading: out of tokens, the context limit, or the turn limit on
        a last turn without a complete final answer (see the module docstring)."""
        if self.finish_reason == "max_turns":
            return not (self.turns and has_complete_answer(self.turns[-1].text))
        return self.finish_reason in ("max_tokens", "engine_stop")

    @property
    def num_policy_tokens(self) -> int:
        return sum(self.response_mask)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = dict(d)
        turns = []
        for t in d.pop("turns", []):
            calls = []
            for c in t.get("tool_calls", []):
                c = dict(c)
                if c.get("result") is not None:
                    c["result"] = ExecResult.from_dict(c["result"])
                calls.append(ToolCall(**c))
            turns.append(Turn(**{**t, "tool_calls": calls}))
        return cls(**d, turns=turns)


def save_trajectories(path: str | Path, trajs: Iterable[Trajectory], append: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for t in trajs:
            f.write(json.dumps(t.to_dict()) + "\n")
        f.flush()


def load_trajectories(path: str | Path) -> list[Trajectory]:
    with Path(path).open() as f:
        return [Trajectory.from_dict(json.loads(line)) for line in f if line.strip()]
