"""Small run and eval directories for the ``tirl view`` tests, built from the real dataclasses.

Training trajectories carry the fields the trainer adds to each record (``step``, ``stage``,
``kept``, ``advantage``, ``roc_penalty``, ``policy_version``, ``entropy``). Counts the tests
rely on (3 steps x 2 problems x 4 samples = 24 training records):

- sample j of problem p is correct when ``j % 2 == 0`` (12 correct, 12 incorrect);
- sample 1 of every group has a failed tool call (``error``: a ZeroDivisionError), sample 3
  a ``timeout``; problem ``p1``'s sample 2 at step 3 has a ``parse_error`` call;
- samples 0 and 1 are kept by RoC, 2 and 3 dropped; sample 3 ends ``max_tokens``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tirl.agent.trajectory import ToolCall, Trajectory, Turn
from tirl.eval.samples import SampleRecord
from tirl.sandbox.types import ExecResult

STEPS, PROBLEMS, GROUP = (1, 2, 3), ("p0", "p1"), 4
# a 1x1 PNG
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2d5a0b40000000049454e44ae426082")


def _call(kind: str, j: int) -> ToolCall:
    code = f"x = {j} * 7\nprint(x)  # compute"
    args = {"name": "python", "arguments": {"code": code, "input": ""}}
    if kind == "ok":
        return ToolCall(raw=json.dumps(args), name="python", arguments=args["arguments"],
                        result=ExecResult(status="ok", stdout=f"{j * 7}\n", exit_code=0, exec_ms=3.5), tool_ms=4.0)
    if kind == "error":
        code = "print(1 / 0)"
        return ToolCall(raw=json.dumps({"name": "python", "arguments": {"code": code}}), name="python",
                        arguments={"code": code, "input": ""},
                        result=ExecResult(status="error", stderr="ZeroDivisionError: division by zero",
                                          exit_code=1, exec_ms=2.0), tool_ms=3.0)
    if kind == "timeout":
        code = "while True: pass"
        return ToolCall(raw=json.dumps({"name": "python", "arguments": {"code": code}}), name="python",
                        arguments={"code": code, "input": ""},
                        result=ExecResult(status="timeout", exec_ms=5000.0), tool_ms=5001.0)
    return ToolCall(raw='{"name": "python", "arguments": {"code": "print(', parse_error="invalid JSON",
                    error_kind="parse_error")


def train_trajectory(step: int, pid: str, j: int) -> dict:
    correct = j % 2 == 0
    calls = [_call("ok", j)]
    if j == 1:
        calls.append(_call("error", j))
    if j == 3:
        calls.append(_call("timeout", j))
    if pid == "p1" and j == 2 and step == 3:
        calls.append(_call("parse", j))
    answer = "42" if correct else str(40 + j)
    turns = [
        Turn(text=f"Let me compute for {pid}.\n<tool_call>{calls[0].raw}</tool_call>", tool_calls=calls,
             gen_ms=120.0, n_generated=9, finish="stop"),
        Turn(text=f"The answer is \\boxed{{{answer}}}. unique-{pid}-s{step}-j{j}", gen_ms=80.0, n_generated=7,
             finish="stop"),
    ]
    n = 16
    t = Trajectory(prompt_ids=[1, 2, 3], response_ids=list(range(100, 100 + n)),
                   response_mask=[1] * 9 + [0] * 3 + [1] * 4, logprobs=[-0.05 * (i % 5) for i in range(n)],
                   turns=turns, finish_reason="max_tokens" if j == 3 else "answer",
                   text="".join(tt.text for tt in turns), problem_id=pid, gold="42",
                   meta={"sample_index": j}, reward=1.0 if correct else 0.0,
                   grade_status="correct" if correct else "incorrect")
    rec = t.to_dict()
    rec.update({"step": step, "stage": "s1", "kept": j < 2, "advantage": 0.5 if correct else -0.5,
                "roc_penalty": 0.25 if j == 1 else 0.0, "policy_version": step - 1,
                "entropy": [0.1 * (i % 7) for i in range(n)]})
    return rec


def make_train_run(root: Path) -> Path:
    (root / "trajectories").mkdir(parents=True)
    (root / "plots").mkdir()
    (root / "checkpoints").mkdir()
    (root / "plots" / "rl.png").write_bytes(PNG)
    (root / "config.toml").write_text('[run]\nname = "viewfixture"\nseed = 0\n\n[rl]\nlr = 1e-06\n')
    (root / "report.md").write_text("# Report viewfixture\n\nHeld-out accuracy went from 0.25 to 0.75.\n")
    metrics = [{"phase": "eval", "label": "init", "step": 0, "held_out_acc": 0.25, "held_out_n": 8}]
    for s in STEPS:
        metrics.append({"phase": "rl", "step": s, "stage": "s1", "reward": 0.2 * s, "pass_rate": 0.5,
                        "tool_error_ratio_pos": 0.3 / s, "response_len_mean": 100.0 + s,
                        "time_generation": 2.0, "time_tools": 0.5 * s, "time_grading": 0.1, "time_update": 1.0})
    metrics.append({"phase": "eval", "label": "s1", "step": 3, "held_out_acc": 0.75, "held_out_n": 8})
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    with (root / "trajectories" / "train.jsonl").open("w") as f:
        for s in STEPS:
            for pid in PROBLEMS:
                for j in range(GROUP):
                    f.write(json.dumps(train_trajectory(s, pid, j)) + "\n")
    return root


def make_eval_dir(root: Path, correct_for: int = 2) -> Path:
    """An eval output over 3 problems x 3 samples; samples ``j < correct_for`` are correct."""
    (root / "samples").mkdir(parents=True)
    (root / "report.md").write_text("# Eval report\n\nbench: pass@1 0.67\n")
    with (root / "samples" / "bench.jsonl").open("w") as f:
        for q in range(3):
            for j in range(3):
                ok = j < correct_for
                rec = SampleRecord(benchmark="bench", problem_id=f"q{q}", sample=j, gold="7",
                                   status="correct" if ok else "incorrect", correct=ok,
                                   answer="7" if ok else "8", finish_reason="answer", response_tokens=30,
                                   generated_tokens=25, turns=2, tool_calls=1, text=f"so \\boxed{{{7 if ok else 8}}}")
                f.write(json.dumps(rec.to_dict()) + "\n")
    return root
