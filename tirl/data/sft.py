"""SFT material for the non-reasoning stage: tool-call format and instruction following.

As in the paper (§4), SFT teaches *how* to talk to the tool, not how to solve the RL
problems: the ``tool_format`` material uses other operations than the RL tasks
(:data:`tirl.data.procedural.SFT_TASKS`: add, subtract, square, double) and a plain
instruction-following task that answers without a tool ("Repeat the number 4821.").

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

from tirl.data.procedural import SFT_TASKS, generate_one

REASON_TOOL = "<reason>I will compute it with Python.</reason>"
REASON_DIRECT = "<reason>The answer is given in the question.</reason>"


def _tool_example(item: dict, rng: random.Random) -> dict:
    from tirl.agent.format import format_tool_call

    out = item["answer"]
    return {
        "problem": item["problem"],
        "turns": [
            [REASON_TOOL + format_tool_call(item["code"]), [{"stdout": out + "\n", "exec_ms": rng.choice([10.0, 20.0, 30.0])}]],
            [f"<answer>\\boxed{{{out}}}</answer>", []],
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


def load_sft_examples(data: str, size: int, seed: int) -> list[dict]:
    """The SFT material named by ``sft.data``: ``tool_format`` or a JSONL file of examples."""
    if data == "tool_format":
        return tool_format_examples(size, seed)
    path = Path(data)
    if path.suffix == ".jsonl" and path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, r in enumerate(rows):
            if "problem" not in r or "turns" not in r:
                raise ValueError(f"{path}:{i + 1}: an SFT example needs 'problem' and 'turns'")
        return rows[:size]
    raise ValueError(f"sft.data = {data!r}: use 'tool_format' or the path of a .jsonl file of examples")


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
