"""Slow end to end through HTTP: `tirl serve`'s server (with a scripted engine behind it),
OpenAIEngine, the real sandbox and grader — everything built by the harness from the config,
as `tirl eval --base-url URL --model NAME --tokenizer DIR` does."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest

from tirl.config import load_config
from tirl.engines.launch import free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("servers", [1, 2])
async def test_eval_against_openai_compatible_servers(tmp_path, data_dir, servers):
    """One server (`--base-url URL`), and two spread by the dispatcher (`--base-url A,B`)."""
    pytest.importorskip("tirl.engines.server", reason="tirl serve (issue 5) is not in this tree")
    pytest.importorskip("tirl.engines.openai", reason="OpenAIEngine (issue 5) is not in this tree")
    from tirl.agent.format import format_tool_call
    from tirl.engines.tokenizer import build_tokenizer
    from tirl.engines.scripted import ScriptedEngine
    from tirl.engines.server import serve
    from tirl.eval.harness import evaluate

    rows = [json.loads(x) for x in (data_dir / "aime24.jsonl").read_text().splitlines()[:2]]
    tok = build_tokenizer([r["problem"] for r in rows], 400)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    finals = defaultdict(int)

    def script(prompt_text, turn):
        i = next(j for j, r in enumerate(rows) if r["problem"][:60] in prompt_text)
        if turn == 0:
            return "<reason>let me compute</reason>" + format_tool_call("print(6*7)")
        assert "42" in prompt_text.split("<tool_response>")[-1]  # the sandbox really ran it
        finals[i] += 1
        right = finals[i] % 2 == 1 or i == 0  # problem 0: 2/2 right; problem 1: 1/2
        ans = rows[i]["answer"] if right else "0"
        return f"<reason>done</reason><answer>\\boxed{{{ans}}}</answer>"

    class ServedScript(ScriptedEngine):
        max_seq_len = 8192

        def stats(self):
            return {"running": 0, "waiting": 0, "kv_usage": 0.0, "kv_capacity_tokens": 8192,
                    "kv_used_tokens": 0}

    engines = [ServedScript(tok, script) for _ in range(servers)]
    urls = []
    tasks = []
    for eng in engines:
        port = free_port()
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(serve(eng, tok, "scripted-model", "127.0.0.1", port, ready=ready)))
        await asyncio.wait_for(ready.wait(), 30)
        urls.append(f"http://127.0.0.1:{port}/v1")
    where = ([f'model.base_url="{urls[0]}"'] if servers == 1 else
             ["dispatch.engines=[" + ", ".join(f'"{u}"' for u in urls) + "]"])
    try:
        cfg = load_config(None, [
            f'data.data_dir="{data_dir}"', 'eval.benchmarks=["aime24"]', "eval.k=2", "eval.limit=2",
            "eval.sampling.max_tokens=2000", "eval.sampling.max_turns=4", "eval.bootstrap_samples=100",
            'model.served_name="scripted-model"', f'model.tokenizer="{tok_dir}"', "sandbox.slots=2",
            "reward.workers=1", *where])
        res = await evaluate(cfg, tmp_path / "run", progress=False)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(e.calls for e in engines) == 8  # 4 samples x 2 turns
    if servers == 2:
        assert all(e.calls > 0 for e in engines), [e.calls for e in engines]
    s = res.summaries[0]
    assert s.statuses == {"correct": 3, "incorrect": 1}
    assert s.avg_at_k.value == pytest.approx((1 + 0.5) / 2)
    assert s.tool_calls_per_sample == 1 and s.tool_error_rate == 0
    assert s.finish_reasons == {"answer": 4}
    assert json.loads((tmp_path / "run" / "report.json").read_text())["settings"]["model"] == "scripted-model"
