"""Against a real vLLM 0.32 CPU server serving SmolLM2-135M-Instruct (opt-in: `make test-vllm`):

1. OpenAIEngine is token-exact: prompts go as ids, ids + logprobs come back, and a two-turn
   AgentLoop trajectory (a real tool call in the real sandbox) passes its prefix checks with
   the server's logprobs equal to the model's own, computed in-process by transformers.
2. Weight reload: a copy of the model with one layer and the (tied) embeddings scaled is written to a new directory and
   loaded with ``reload_from_disk``; the server's logprobs for a fixed prompt then equal the
   perturbed model's (and no longer the original's), and the served version is the new one.
3. The prefix cache: a long prompt cached before a reload gives the new weights' logprobs after
   it. A control reload without the flush shows the check can fail (stale KV entries).
4. In-flight requests: with ``in_flight="finish"`` a request running during the reload ends
   entirely on the old weights; with ``"pause"`` it is frozen, then finishes (not aborted);
   with ``"abort"`` it ends at once as ``abort``.
"""

import asyncio
import json
import time

import aiohttp
import pytest
import torch

from tirl.engines import vllm_weights as vw
from tirl.engines.openai import OpenAIEngine
from tests.vllm.server import SERVED_NAME

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

ATOL = 1e-3  # float32 on both sides; vLLM's CPU kernels and PyTorch's differ in summation order
LAYER = 5    # the layer the perturbation scales


@pytest.fixture(scope="module")
def models(vllm_server, tmp_path_factory):
    """(tokenizer, base model, perturbed model, perturbed directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vllm_server.model_dir)
    base = AutoModelForCausalLM.from_pretrained(vllm_server.model_dir, dtype=torch.float32).eval()
    bumped = AutoModelForCausalLM.from_pretrained(vllm_server.model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        layer = bumped.model.layers[LAYER]
        layer.mlp.down_proj.weight.mul_(1.5)
        layer.self_attn.o_proj.weight.mul_(1.5)
        bumped.model.embed_tokens.weight.mul_(1.1)  # tied to the LM head: both must follow
    out = tmp_path_factory.mktemp("perturbed") / "v1"
    bumped.save_pretrained(out)  # safetensors, HF names: what the trainer's disk backend writes
    return tok, base, bumped, out


def reference(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion[i] | prompt + completion[:i]) by transformers, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ids = torch.tensor([prompt + completion])
            logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    finally:
        torch.set_num_threads(threads)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def fresh_session() -> aiohttp.ClientSession:
    """A connection per request: the reference forwards between requests outlast uvicorn's
    keep-alive (5 s), and a POST on a connection it closed fails instead of being retried."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


async def complete(session, url: str, prompt: list[int], n: int) -> tuple[list[int], list[float], str]:
    """Greedy ``n`` tokens for a token-id prompt: (ids, logprobs, finish_reason)."""
    body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": n, "temperature": 0.0,
            "logprobs": 1, "return_token_ids": True, "ignore_eos": True}
    async with session.post(url + "/v1/completions", json=body) as r:
        data = json.loads(await r.text())
        assert r.status == 200, data
    c = data["choices"][0]
    lps = (c.get("logprobs") or {}).get("token_logprobs") or []  # none when aborted at once
    return c.get("token_ids") or [], [float(x) for x in lps], c["finish_reason"]


def fixed_prompt(tok) -> list[int]:
    text = ("<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n")
    return list(tok.encode(text, add_special_tokens=False))


def long_prompt(tok) -> list[int]:
    """About 700 tokens: many full KV blocks for the prefix cache to keep."""
    para = ("The harbour was quiet in the early morning, and the boats rocked gently against the "
            "wooden piers while gulls circled above the fish market. ")
    text = f"<|im_start|>user\nSummarise this story.\n{para * 24}<|im_end|>\n<|im_start|>assistant\n"
    ids = list(tok.encode(text, add_special_tokens=False))
    assert len(ids) > 500
    return ids


async def test_openai_engine_rollout_is_token_exact(vllm_server, models):
    from tirl.agent.config import AgentConfig, SamplingConfig
    from tirl.agent.loop import AgentLoop
    from tirl.sandbox import make_executor

    from tests.engines.test_smollm2_slow import few_shot_prompt

    tok, base, _, _ = models
    async with fresh_session() as s:  # whatever ran before, serve the original weights
        await vw.reload_from_disk(s, vllm_server.url, str(vllm_server.model_dir), "base")

    engine = OpenAIEngine(vllm_server.url + "/v1", SERVED_NAME, require_logprobs=True)
    await engine.start()
    assert engine.owners[SERVED_NAME] == "vllm" and engine.token_ids is True  # ids sent as ids
    seen = []
    real_generate = engine.generate

    async def recording(*a, **k):
        c = await real_generate(*a, **k)
        seen.append(c)
        return c

    engine.generate = recording
    tools = await make_executor()
    try:
        loop = AgentLoop(engine, tok, tools, AgentConfig(open_with_reason=False),
                         sampling=SamplingConfig(max_turns=2, max_tokens=160, temperature=0.0))
        prompt = few_shot_prompt(tok, "What is 123 * 45?")
        traj = await loop.rollout(prompt)
    finally:
        await tools.close()
        await engine.aclose()

    assert traj.finish_reason != "infra_error", traj.meta
    assert len(traj.turns) == 2, [t.text for t in traj.turns]  # a tool call, then the answer turn
    call = traj.turns[0].tool_calls[0]
    assert call.result is not None and call.result.status == "ok", call
    assert loop.prefix_checks >= 2 and loop.prefix_mismatches == 0
    assert len(seen) == 2 and all(c.meta["token_exact"] for c in seen)  # ids came back as ids
    assert all(c.logprobs is not None and len(c.logprobs) == len(c.token_ids) for c in seen)
    ref = reference(base, traj.prompt_ids, traj.response_ids)
    mask = torch.tensor(traj.response_mask, dtype=torch.bool)
    assert mask.sum() > 10 and (~mask).sum() > 0  # generated tokens and the tool's response
    assert max_diff(ref[mask], torch.tensor(traj.logprobs)[mask]) < ATOL


async def test_reload_from_disk_serves_the_new_weights(vllm_server, models):
    tok, base, bumped, bumped_dir = models
    prompt = fixed_prompt(tok)
    async with fresh_session() as s:
        await vw.reload_from_disk(s, vllm_server.url, str(vllm_server.model_dir), "base")
        ids0, lp0, _ = await complete(s, vllm_server.url, prompt, 24)
        assert max_diff(lp0, reference(base, prompt, ids0)) < ATOL

        times = await vw.reload_from_disk(s, vllm_server.url, str(bumped_dir), 1)
        assert await vw.weight_version(s, vllm_server.url) == "1"
        ids1, lp1, _ = await complete(s, vllm_server.url, prompt, 24)
    new_ref, old_ref = reference(bumped, prompt, ids1), reference(base, prompt, ids1)
    print(json.dumps({"reload_from_disk_s": times, "model_bytes": sum(
        p.numel() * p.element_size() for p in bumped.parameters())}))
    assert times["method"] == "tirl_reload_weights" and "lm_head" in times["repacked"]
    assert max_diff(lp1, new_ref) < ATOL                      # the perturbed model's own
    assert max_diff(new_ref, old_ref) > 50 * ATOL             # and the perturbation is visible
    assert ids1 != ids0 or max_diff(lp1, lp0) > 50 * ATOL     # the server's answer changed


async def test_prefix_cache_is_flushed_by_the_reload(vllm_server, models):
    tok, base, bumped, bumped_dir = models
    prompt = long_prompt(tok)
    url = vllm_server.url
    async with fresh_session() as s:
        await vw.reload_from_disk(s, url, str(vllm_server.model_dir), "base")
        ids, lp, _ = await complete(s, url, prompt, 8)  # the prompt's KV blocks are now cached
        assert max_diff(lp, reference(base, prompt, ids)) < ATOL

        # control: the weights alone, no flush: the cached prompt's KV (old weights) is reused
        await vw.reload_weights(s, url, str(bumped_dir))
        ids_stale, lp_stale, _ = await complete(s, url, prompt, 8)
        stale_gap = max_diff(lp_stale, reference(bumped, prompt, ids_stale))
        await vw.reset_prefix_cache(s, url)
        ids_new, lp_new, _ = await complete(s, url, prompt, 8)
        assert max_diff(lp_new, reference(bumped, prompt, ids_new)) < ATOL

        # the full reload back to the original flushes too: the cached (perturbed) KV is gone
        await vw.reload_from_disk(s, url, str(vllm_server.model_dir), "base-again")
        ids_back, lp_back, _ = await complete(s, url, prompt, 8)
    assert max_diff(lp_back, reference(base, prompt, ids_back)) < ATOL
    print(json.dumps({"stale_prefix_gap": stale_gap}))
    assert stale_gap > 10 * ATOL, "without the flush the cached prompt should give stale logprobs"


async def test_in_flight_requests_finish_pause_or_abort(vllm_server, models):
    tok, base, bumped, bumped_dir = models
    prompt = fixed_prompt(tok)
    url = vllm_server.url
    async with fresh_session() as s:
        await vw.reload_from_disk(s, url, str(vllm_server.model_dir), "base")
        # finish: the running request completes on the old weights before the reload
        running = asyncio.create_task(complete(s, url, prompt, 96))
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        await vw.reload_from_disk(s, url, str(bumped_dir), 2, in_flight="finish")
        ids, lp, finish = await running
        assert finish == "length" and len(ids) == 96
        assert max_diff(lp, reference(base, prompt, ids)) < ATOL  # every token from the old weights
        waited = time.perf_counter() - t0

        # pause: the running request is frozen through the reload, then completes (not aborted)
        running = asyncio.create_task(complete(s, url, prompt, 96))
        await asyncio.sleep(1.0)
        await vw.reload_from_disk(s, url, str(vllm_server.model_dir), 3, in_flight="pause")
        ids, lp, finish = await running
        assert finish == "length" and len(ids) == 96
        assert await vw.weight_version(s, url) == "3"

        # abort: the running request ends at once with finish_reason "abort" (an infra error)
        running = asyncio.create_task(complete(s, url, prompt, 96))
        await asyncio.sleep(1.0)
        await vw.reload_from_disk(s, url, str(bumped_dir), 4, in_flight="abort")
        ids, lp, finish = await running
        assert finish == "abort" and len(ids) < 96
        assert await vw.weight_version(s, url) == "4"
    print(json.dumps({"reload_with_running_request_s": waited}))
