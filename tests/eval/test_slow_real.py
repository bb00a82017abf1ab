"""Slow end to end: a real (tiny, random) in-process model, the real sandbox and grader."""

from __future__ import annotations

import json

import pytest

from tirl.config import load_config, resolve_sampling

pytestmark = pytest.mark.slow


def tiny_model_dir(tmp_path, data_dir):
    """A random 2-layer Llama with a tokenizer built from the benchmark text, saved like a
    checkpoint (so it is loaded the way `tirl eval --model DIR` loads one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tirl.engines.tokenizer import build_tokenizer

    rows = [json.loads(x) for x in (data_dir / "aime24.jsonl").read_text().splitlines()]
    tok = build_tokenizer([r["problem"] for r in rows], 400)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id,
        bos_token_id=None, tie_word_embeddings=True)).eval()
    d = tmp_path / "tiny"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


async def test_tiny_local_model_real_sandbox_real_grader(tmp_path, data_dir):
    pytest.importorskip("tirl.engines.local", reason="LocalEngine (issue 5) is not in this tree")
    from tirl.agent.loop import AgentLoop
    from tirl.engines.local import LocalEngine
    from tirl.eval.harness import evaluate
    from tirl.reward import Grader
    from tirl.sandbox import make_executor

    _, model, tok = tiny_model_dir(tmp_path, data_dir)
    cfg = load_config(None, [f'data.data_dir="{data_dir}"', 'eval.benchmarks=["aime24"]', "eval.k=2",
                             "eval.limit=2", "eval.sampling.max_tokens=48", "eval.sampling.max_turns=2",
                             "eval.sampling.temperature=1.0", "eval.bootstrap_samples=100", "sandbox.slots=2"])
    engine = LocalEngine(model, tok, max_batch=4)
    tools = await make_executor(cfg.sandbox)
    try:
        loop = AgentLoop(engine, tok, tools, cfg.agent, sampling=resolve_sampling(cfg, "eval"))
        with Grader(workers=1, timeout_s=10) as grader:
            res = await evaluate(cfg, tmp_path / "run", loop=loop, grader=grader, progress=False)
    finally:
        await tools.close()
        engine.close()
    s = res.summaries[0]
    assert s.samples == 4 and s.problems == 2
    recs = res.runs["aime24"].records
    assert all(0 < r.response_tokens <= 48 for r in recs)
    assert all(r.status in ("correct", "incorrect", "no_answer", "truncated") for r in recs)
    assert 0.0 <= s.avg_at_k.value <= 1.0
    assert (tmp_path / "run" / "report.md").is_file()


def test_cli_in_process_model_end_to_end(tmp_path, data_dir, capsys):
    """`tirl eval --model DIR` exactly as a user runs it (load_model, LocalEngine, sandbox, grader)."""
    pytest.importorskip("tirl.engines.models", reason="load_model (issue 5) is not in this tree")
    from tirl.cli import main

    model_dir, _, _ = tiny_model_dir(tmp_path, data_dir)
    out = tmp_path / "out"
    argv = ["eval", "--model", str(model_dir), "--benchmark", "aime24,amc23", "--limit", "2",
            "--k", "2", "--temperature", "1.0", "--max-tokens", "40", "--max-turns", "2",
            "--data-dir", str(data_dir), "--output", str(out), "--bootstrap", "50", "--no-progress",
            "sandbox.slots=2", "reward.workers=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| aime24 | 2 |" in printed and "| amc23 | 2 |" in printed
    rep = json.loads((out / "report.json").read_text())
    assert [b["benchmark"] for b in rep["benchmarks"]] == ["aime24", "amc23"]
    assert all(b["samples"] == 4 for b in rep["benchmarks"])
    assert rep["settings"]["model"] == str(model_dir)
    # the same command again resumes: nothing new is sampled, the numbers are unchanged
    assert main(argv) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert [b["avg_at_k"] for b in rep2["benchmarks"]] == [b["avg_at_k"] for b in rep["benchmarks"]]
    lines = (out / "samples" / "aime24.jsonl").read_text().splitlines()
    assert len(lines) == 4
