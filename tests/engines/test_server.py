import asyncio
import json

import aiohttp
import pytest

from tirl.agent import format as fmt
from tirl.agent.config import AgentConfig, SamplingConfig
from tirl.agent.loop import AgentLoop
from tirl.engines.local import LocalEngine
from tirl.engines.openai import EngineError, OpenAIEngine
from tirl.engines.scripted import ScriptedEngine

from tests.agent.fakes import FakeTools
from tests.agent.tiny import tiny_model, tiny_tokenizer
from tests.engines.serving import free_port, running, serve_app


class ScriptedWithStats(ScriptedEngine):
    max_seq_len = 4096

    def stats(self):
        return {"running": 0, "waiting": 0, "kv_used_tokens": 0, "kv_capacity_tokens": 4096, "kv_usage": 0.0}


async def test_openai_engine_through_tirl_serve_is_token_exact():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    local = LocalEngine(model, tok, max_batch=4)
    async with running(local, tok) as url:
        eng = OpenAIEngine(url + "/v1", "tiny", require_logprobs=True)
        assert await eng.models() == ["tiny"]
        prompts = [tok.encode(f"What is {i}?") for i in range(3)]
        remote = await asyncio.gather(*(eng.generate(p, 12, 0.0) for p in prompts))
        direct = await asyncio.gather(*(local.generate(p, 12, 0.0) for p in prompts))
        for r, d in zip(remote, direct):
            assert r.token_ids == d.token_ids and r.meta["token_exact"]
            assert r.logprobs == pytest.approx(d.logprobs, abs=1e-5)
            assert r.finish_reason == "length"
        stop_id = direct[0].token_ids[3]
        r = await eng.generate(prompts[0], 12, 0.0, [stop_id])
        assert r.finish_reason == "stop" and r.token_ids[-1] == stop_id and r.stop_reason == stop_id
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/metrics") as resp:
                text = await resp.text()
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                         "vllm:cache_config_info"):
                assert name in text
            # vLLM-style fields a plain client sends
            body = {"model": "tiny", "prompt": prompts[1], "max_tokens": 5, "temperature": 0, "logprobs": 1,
                    "return_tokens_as_token_ids": True}
            async with s.post(url + "/v1/completions", json=body) as resp:
                data = await resp.json()
            c = data["choices"][0]
            assert c["logprobs"]["tokens"] == [f"token_id:{t}" for t in direct[1].token_ids[:5]]
            assert data["usage"]["completion_tokens"] == 5
            async with s.post(url + "/v1/completions", json={"model": "other", "prompt": "x"}) as resp:
                assert resp.status == 404 and "does not exist" in (await resp.json())["error"]["message"]
            async with s.post(url + "/v1/completions", json={"prompt": [10**9]}) as resp:
                assert resp.status == 400
        # the agent loop runs unchanged over HTTP
        loop = AgentLoop(eng, tok, FakeTools(), AgentConfig(system_prompt="short"),
                         sampling=SamplingConfig(max_tokens=30, max_turns=2))
        trajs = await loop.run("2+2?", n=2)
        assert all(len(t.response_ids) == len(t.logprobs) <= 30 for t in trajs)
        await eng.aclose()
    local.close()


async def test_chat_completions_returns_hermes_tool_calls():
    tok = tiny_tokenizer()
    eng = ScriptedWithStats(tok, ["Let me run it. " + fmt.format_tool_call("print(2+2)")])
    async with running(eng, tok, "scripted") as url:
        body = {"model": "scripted", "messages": [{"role": "user", "content": "2+2?"}],
                "tools": [fmt.TOOL_SCHEMA], "max_tokens": 200}
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", json=body) as resp:
                data = await resp.json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == fmt.TOOL_NAME
    assert json.loads(call["function"]["arguments"]) == {"code": "print(2+2)", "input": ""}
    assert choice["message"]["content"] == "Let me run it."
    prompt = tok.decode(eng.prompts[0], skip_special_tokens=False)
    assert fmt.TOOL_NAME in prompt and prompt.endswith("<|im_start|>assistant\n")


async def test_openai_engine_fails_fast_with_a_clear_error_on_a_closed_port():
    port = free_port()
    eng = OpenAIEngine(f"http://127.0.0.1:{port}", "m", retries=2, backoff_s=0.01)
    with pytest.raises(EngineError, match="is the server running"):
        await eng.generate([1, 2, 3], 4)  # the start-up check fails; no retries (issue #17)
    assert eng.retried == 0
    await eng.aclose()


async def test_missing_logprobs_are_an_error_when_required():
    from aiohttp import web

    async def completions(request):
        return web.json_response({"choices": [{"text": "hi", "token_ids": [5, 6], "finish_reason": "stop"}]})

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions)])
    async with serve_app(app) as url:
        eng = OpenAIEngine(url + "/v1", "m", require_logprobs=True)
        with pytest.raises(EngineError, match="no per-token logprobs"):
            await eng.generate([1], 4)
        eng.require_logprobs = False
        c = await eng.generate([1], 4)
        assert c.token_ids == [5, 6] and c.logprobs is None
        await eng.aclose()


async def test_text_only_server_falls_back_to_text_prompts():
    from aiohttp import web

    tok = tiny_tokenizer()
    seen = []

    async def completions(request):
        body = await request.json()
        if not isinstance(body["prompt"], str):
            return web.json_response({"error": "prompt must be a string"}, status=400)
        seen.append(body["prompt"])
        return web.json_response({"choices": [{"text": " answer", "finish_reason": "stop",
                                               "logprobs": {"token_logprobs": [-0.1]}}]})

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions)])
    async with serve_app(app) as url:
        eng = OpenAIEngine(url, "m", tokenizer=tok)
        ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
        c = await eng.generate(ids, 4)
        assert seen[1:] == ["<|im_start|>user\nhi<|im_end|>"]  # after the start-up probe as text
        assert tok.decode(c.token_ids) == " answer" and not c.meta["token_exact"]
        assert eng.token_ids is False
        await eng.aclose()
