"""SFT material for the non-reasoning stage: tool-call format and instruction following.

As in the paper (§4), SFT teaches *how* to talk to the tool, not how to solve the RL
problems: the ``tool_format`` material uses other operations than the RL tasks
(:data:`tirl.data.procedural.SFT_TASKS`: add, subtract, square, double) and a plain
instruction-following task that answers without a tool ("Repeat the number 4821.").

``tool_recovery`` (issue #15) is format material in which a fraction of the traces
(``mistake_fraction``, default 40%) first make a realistic mistake — a missing import, a
misspelled name, output not printed, stdin parsed wrong or not passed — read the tool's
answer and fix it in the next turn, on :data:`tirl.data.procedural.SFT_RECOVERY_TASKS`.
The tool responses are what the sandbox prints: the code is run in-process with the
sandbox's own cell runner (:func:`tirl.sandbox.runner.run_cell`), so a traceback in SFT
is character for character the one a rollout sees. (Only our own reference code and its
mutations run here, never model output.)

An example is ``{"problem": str, "turns": [[assistant_text, [tool stdout, ...]], ...]}``;
:func:`tokenize_example` renders it with :func:`tirl.agent.format.render_sft_example` —
the very text the rollout produces — and returns ids with a loss mask that is 1 on the
assistant's tokens only.

What it does not do: chat data or function-calling corpora from the hub (the machine has no
hub access); a JSONL file of examples in the format above can be given instead
(``sft.data = "path/to/file.jsonl"``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tirl.data.procedural import SFT_RECOVERY_TASKS, SFT_TASKS, generate_one

REASON_TOOL = "<reason>I will compute it with Python.</reason>"
REASON_DIRECT = "<reason>The answer is given in the question.</reason>"
# the turn after a tool result closes its reasoning too (the template opens every assistant
# turn with <reason> in the rstar2 format, so an answer-only turn would leave it open)
REASON_ANSWER = "<reason>The tool printed it.</reason>"

# what the fixing turn says after each kind of first mistake (the model's "reflection")
FIX_REASONS = {
    "missing_import": "<reason>The name is not defined: I forgot the import.</reason>",
    "misspelled_name": "<reason>A name is misspelled: I correct it.</reason>",
    "not_printed": "<reason>Nothing was printed: I print the result.</reason>",
    "stdin_parse": "<reason>The input has two numbers: I split it.</reason>",
    "stdin_missing": "<reason>The input was empty: I pass the numbers.</reason>",
}
# how often each applicable kind is picked: mostly real errors (what RoC's p_err counts);
# "not printed" runs fine and shows "(no output)", so it is rarer
MISTAKE_WEIGHTS = {"missing_import": 3.0, "misspelled_name": 2.0, "not_printed": 1.0,
                   "stdin_parse": 3.0, "stdin_missing": 2.0}
_MISSPELL = (("math.gcd(", "math.gdc("), ("math.lcm(", "math.lmc("), ("math.perm(", "math.prem("),
             ("math.comb(", "math.cmob("), ("Fraction(", "Fracton("), ("print(", "prnt("))
_STDIN_PARSE = "map(int, input().split())"


def mistake_kinds(code: str, stdin: str = "") -> list[str]:
    """The first mistakes that apply to reference ``code`` (in :data:`FIX_REASONS` order)."""
    kinds = []
    if code.startswith(("import ", "from ")):
        kinds.append("missing_import")
    if any(right in code for right, _ in _MISSPELL):
        kinds.append("misspelled_name")
    if code.splitlines()[-1].startswith("print(") and code.endswith(")"):
        kinds.append("not_printed")
    if _STDIN_PARSE in code:
        kinds.append("stdin_parse")
    if stdin:
        kinds.append("stdin_missing")
    return kinds


def make_mistake(code: str, stdin: str, kind: str) -> tuple[str, str]:
    """(code, stdin) of the first, wrong attempt at reference ``code`` with mistake ``kind``."""
    if kind not in mistake_kinds(code, stdin):
        raise ValueError(f"mistake {kind!r} does not apply to {code!r}; possible: {mistake_kinds(code, stdin)}")
    if kind == "missing_import":
        return code.split("\n", 1)[1], stdin
    if kind == "misspelled_name":
        right, wrong = next((r, w) for r, w in _MISSPELL if r in code)
        return code.replace(right, wrong, 1), stdin
    if kind == "not_printed":
        *head, last = code.split("\n")
        return "\n".join(head + ["result = " + last[len("print("):-1]]), stdin
    if kind == "stdin_parse":
        return code.replace(_STDIN_PARSE, "int(input())"), stdin
    return code, ""  # stdin_missing: the numbers were not passed as input


def run_like_sandbox(code: str, stdin: str = "") -> dict:
    """Run our own reference code (or a mutation of it) in-process with the sandbox's cell
    runner and return ``{"status", "stdout", "stderr"}`` as the sandbox would.

    Only for the trusted, generated code of this module: it is no sandbox."""
    import contextlib
    import io
    import sys

    from tirl.sandbox.runner import run_cell

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            outcome = run_cell(code, {"__name__": "__main__", "__builtins__": __builtins__})
    finally:
        sys.stdin = old_stdin
    return {"status": "ok" if outcome.kind == "ok" else "error", "stdout": out.getvalue(),
            "stderr": err.getvalue()}


def _tool_example(item: dict, rng: random.Random) -> dict:
    from tirl.agent.format import format_tool_call

    out = item["answer"]
    return {
        "problem": item["problem"],
        "turns": [
            [REASON_TOOL + format_tool_call(item["code"], item.get("input", "")),
             [{"stdout": out + "\n", "exec_ms": rng.choice([10.0, 20.0, 30.0])}]],
            [f"{REASON_ANSWER}<answer>\\boxed{{{out}}}</answer>", []],
        ],
    }


def recovery_example(item: dict, kind: str, rng: random.Random) -> dict:
    """A three-turn trace: the first call makes mistake ``kind``, the tool answers (the
    sandbox's real traceback or "(no output)"), the second turn diagnoses and fixes it,
    the third answers."""
    from tirl.agent.format import format_tool_call

    code, stdin = item["code"], item.get("input", "")
    bad_code, bad_stdin = make_mistake(code, stdin, kind)
    bad = run_like_sandbox(bad_code, bad_stdin)
    good = run_like_sandbox(code, stdin)
    if bad["stdout"].strip() == item["answer"] or good["stdout"].strip() != item["answer"]:
        raise AssertionError(f"mistake {kind!r} on {code!r} did not fail, or the fix is wrong: {bad} {good}")
    ms = lambda: rng.choice([10.0, 20.0, 30.0])  # noqa: E731
    return {
        "problem": item["problem"],
        "mistake": kind,
        "turns": [
            [REASON_TOOL + format_tool_call(bad_code, bad_stdin), [{**bad, "exec_ms": ms()}]],
            [FIX_REASONS[kind] + format_tool_call(code, stdin), [{**good, "exec_ms": ms()}]],
            [f"{REASON_ANSWER}<answer>\\boxed{{{item['answer']}}}</answer>", []],
        ],
    }


def _repeat_example(rng: random.Random) -> dict:
    a = rng.randint(100, 99999)
    return {"problem": f"Repeat the number {a}.",
            "turns": [[f"{REASON_DIRECT}<answer>\\boxed{{{a}}}</answer>", []]]}


def tool_format_examples(size: int, seed: int, repeat_fraction: float = 0.15) -> list[dict]:
    """``size`` examples: tool calls on SFT_TASKS plus some answer-directly instructions."""
    rng = random.Random(f"tirl-sft-{seed}")
    out = []
    for i in range(size):
        if rng.random() < repeat_fraction:
            out.append(_repeat_example(rng))
        else:
            out.append(_tool_example(generate_one(SFT_TASKS[i % len(SFT_TASKS)], rng), rng))
    return out


def tool_recovery_examples(size: int, seed: int, mistake_fraction: float = 0.4,
                           repeat_fraction: float = 0.1) -> list[dict]:
    """``size`` examples on SFT_RECOVERY_TASKS: ``mistake_fraction`` of the tool traces make
    a first mistake (kind drawn by :data:`MISTAKE_WEIGHTS` among those that apply) and recover; the rest call once.
    Plus some answer-directly instructions."""
    if not 0.0 <= mistake_fraction <= 1.0:
        raise ValueError(f"mistake_fraction = {mistake_fraction}: use a fraction in [0, 1]")
    rng = random.Random(f"tirl-sft-recovery-{seed}")
    out = []
    for i in range(size):
        if rng.random() < repeat_fraction:
            out.append(_repeat_example(rng))
            continue
        item = generate_one(SFT_RECOVERY_TASKS[i % len(SFT_RECOVERY_TASKS)], rng)
        if rng.random() < mistake_fraction:
            kinds = mistake_kinds(item["code"], item.get("input", ""))
            kind = rng.choices(kinds, weights=[MISTAKE_WEIGHTS[k] for k in kinds])[0]
            out.append(recovery_example(item, kind, rng))
        else:
            out.append(_tool_example(item, rng))
    return out


SFT_MATERIALS = ("tool_format", "tool_recovery")


def load_sft_examples(data: str, size: int, seed: int) -> list[dict]:
    """The SFT material named by ``sft.data``: ``tool_format``, ``tool_recovery`` or a JSONL
    file of examples."""
    if data == "tool_format":
        return tool_format_examples(size, seed)
    if data == "tool_recovery":
        return tool_recovery_examples(size, seed)
    path = Path(data)
    if path.suffix == ".jsonl" and path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, r in enumerate(rows):
            if "problem" not in r or "turns" not in r:
                raise ValueError(f"{path}:{i + 1}: an SFT example needs 'problem' and 'turns'")
        return rows[:size]
    raise ValueError(f"sft.data = {data!r}: use 'tool_format', 'tool_recovery' or the path of a .jsonl file of examples")


def exec_result(r: Any):
    from tirl.sandbox.types import ExecResult

    if isinstance(r, str):
        return ExecResult(status="ok", stdout=r)
    return ExecResult(status=r.get("status", "ok"), stdout=r.get("stdout", ""),
                      stderr=r.get("stderr", ""), exec_ms=float(r.get("exec_ms", 0.0)))


def render_example_text(example: dict, system: str | None = None, timing: bool = True,
                        open_with_reason: bool = True) -> tuple[str, list[tuple[str, bool]]]:
    """(prompt text, [(segment text, trained)]) exactly as rollouts render it; ``timing`` and
    ``open_with_reason`` as ``[agent] tool_response_timing`` / ``open_with_reason``."""
    from tirl.agent.format import render_sft_example

    turns = [(text, [exec_result(r) for r in results]) for text, results in example["turns"]]
    return render_sft_example(example["problem"], turns, system=system, timing=timing,
                              open_with_reason=open_with_reason)


def example_texts(example: dict, system: str | None = None, timing: bool = True,
                  open_with_reason: bool = True) -> str:
    prompt, segs = render_example_text(example, system, timing, open_with_reason)
    return prompt + "".join(s for s, _ in segs)


def tokenize_example(tokenizer, example: dict, system: str | None = None, max_length: int | None = None,
                     timing: bool = True, open_with_reason: bool = True) -> tuple[list[int], list[int]]:
    """(ids, loss mask): mask 1 on assistant tokens, 0 on prompt, template and tool text."""
    prompt, segs = render_example_text(example, system, timing, open_with_reason)
    ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    mask = [0] * len(ids)
    for text, trained in segs:
        seg = list(tokenizer.encode(text, add_special_tokens=False))
        ids += seg
        mask += [1 if trained else 0] * len(seg)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def tokenizer_texts(sft, agent, problems: list[dict], seed: int) -> list[str]:
    """Text a scratch tokenizer is trained on for a run: its SFT material, its prompts and
    the tool responses it will show, rendered as rollouts render them (``sft``: the ``[sft]``
    section, ``agent``: ``[agent]``)."""
    from tirl.agent import format as fmt
    from tirl.sandbox.types import ExecResult

    texts: list[str] = []
    if sft.enabled:
        exs = load_sft_examples(sft.data, min(sft.size, 500), seed)
        texts += [example_texts(e, agent.system_prompt, agent.tool_response_timing, agent.open_with_reason)
                  for e in exs]
    texts += [fmt.render_prompt_text(None, p["problem"], "rstar2", system=agent.system_prompt,
                                     open_with_reason=agent.open_with_reason) for p in problems[:500]]
    for r in (ExecResult(status="ok", stdout="1\n"), ExecResult(status="error", stderr="Traceback\nError"),
              ExecResult(status="timeout")):
        texts.append(fmt.format_tool_response(r, timing=agent.tool_response_timing))
    return texts
