"""Fixtures for trainer tests: a tiny config, a scripted policy and an instant tool."""

import re

import pytest

from tirl.config import load_config
from tirl.sandbox.types import ExecResult


def tiny_config(tmp_path, name="t", **extra):
    overrides = [
        f"run.output_dir={tmp_path}", f"run.name={name}", "run.seed=3",
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.max_position=256",
        "data.size=64", "data.held_out_size=2",
        "sft.size=16", "sft.epochs=1", "sft.batch_size=8",
        "rl.problems_per_step=2", "rl.group_size=4", "rl.oversample=2", "rl.lr=1e-3",
        "rl.warmup_steps=1", "rl.micro_batch_tokens=256", "rl.checkpoint_every=100", "rl.plot_every=1",
        "stages.0.steps=3", "eval.k=1",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config("demo", overrides)


class InstantTools:
    """A tool executor that evaluates `print(a*b)`-style code without a sandbox."""

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        m = re.fullmatch(r"print\((\d+)([*+%-])(\d+)\)", code.strip())
        if not m:
            return ExecResult(status="error", stderr="SyntaxError: invalid syntax", exit_code=1)
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        val = {"*": a * b, "+": a + b, "-": a - b, "%": a % b}[op]
        return ExecResult(status="ok", stdout=f"{val}\n", exit_code=0, exec_ms=10.0)

    async def close_session(self, session_id):
        return True

    async def close(self):
        pass


def scripted_policy():
    """Engine factory: turn 0 calls the tool (every third rollout of a problem with the wrong operator),
    turn 1 answers with the number the tool printed."""
    from tirl.agent.format import format_tool_call
    from tirl.engines.scripted import ScriptedEngine

    seen: dict[str, int] = {}  # per problem, so a resumed run continues the same pattern

    def script(prompt_text, turn):
        if turn == 0:
            seen[prompt_text] = seen.get(prompt_text, 0) + 1
            a, b = re.findall(r"What is (\d+) times (\d+)\?", prompt_text)[-1]
            op = "+" if seen[prompt_text] % 3 == 0 else "*"
            return "<reason>compute</reason>" + format_tool_call(f"print({a}{op}{b})")
        out = re.findall(r"stdout:\n(-?\d+)", prompt_text)
        return f"<answer>\\boxed{{{out[-1] if out else 0}}}</answer>"

    return lambda model, tok: ScriptedEngine(tok, script, logprob=-1.0)


async def _tools():
    return InstantTools()


@pytest.fixture
def tools_factory():
    return _tools
