"""OpenAIEngine against small in-process servers: the start-up check, the token-id probe,
errors that name the server's message, bounded waits, and finish reasons (issues #12, #17)."""

import asyncio
import contextlib

import pytest
from aiohttp import web

from tirl.engines.openai import EngineError, EngineUnreachable, OpenAIEngine

from tests.agent.tiny import tiny_tokenizer
from tests.engines.serving import serve_app
from tirl.engines.launch import free_port


class FakeServer:
    """A /v1/models + /v1/completions server whose answers the test scripts."""

    def __init__(self, *, ids_ok=True, text_ok=True, finish="stop", models=("m",), reject=None, owner=None):
        self.ids_ok, self.text_ok, self.finish, self.models = ids_ok, text_ok, finish, models
        self.owner = owner
        self.reject = reject  # (status, message) for every generation with max_tokens > 1
        self.bodies: list[dict] = []
        self.model_calls = 0

    async def list_models(self, request):
        self.model_calls += 1
        cards = [{"id": m, **({"owned_by": self.owner} if self.owner else {})} for m in self.models]
        return web.json_response({"object": "list", "data": cards})

    async def completions(self, request):
        body = await request.json()
        self.bodies.append(body)
        is_text = isinstance(body["prompt"], str)
        if (is_text and not self.text_ok) or (not is_text and not self.ids_ok):
            return web.json_response({"error": {"message": "prompt: wrong type", "code": 400}}, status=400)
        if self.reject is not None and body["max_tokens"] > 1:
            status, message = self.reject
            return web.json_response({"error": {"message": message, "code": status}}, status=status)
        choice = {"text": " 7", "finish_reason": self.finish,
                  "logprobs": {"token_logprobs": [-0.25]}}
        if not is_text:
            choice["token_ids"] = [7]
        return web.json_response({"choices": [choice]})

    @contextlib.asynccontextmanager
    async def running(self):
        app = web.Application()
        app.add_routes([web.get("/v1/models", self.list_models), web.post("/v1/completions", self.completions)])
        async with serve_app(app) as url:
            yield url + "/v1"


@contextlib.asynccontextmanager
async def silent_server():
    """Accepts connections and never answers (a hung server)."""
    conns = []

    async def handle(reader, writer):
        conns.append(writer)
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for w in conns:
            w.close()
        server.close()


async def test_start_checks_models_and_probes_token_ids_once():
    srv = FakeServer(models=("served",))
    async with srv.running() as url:
        eng = OpenAIEngine(url)
        await eng.start()
        assert eng.model == "served" and eng.token_ids is True and srv.model_calls == 1
        assert len(srv.bodies) == 1 and srv.bodies[0]["max_tokens"] == 1  # the probe
        c = await eng.generate([1, 2], 4)
        assert c.token_ids == [7] and c.meta["token_exact"] and isinstance(srv.bodies[-1]["prompt"], list)
        assert srv.model_calls == 1  # started once
        await eng.aclose()


@pytest.mark.parametrize("owner", ["vllm", "sglang", "tirl"])
async def test_servers_known_to_take_token_ids_are_not_probed(owner):
    srv = FakeServer(owner=owner)
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m")
        await eng.start()
        assert eng.token_ids is True and srv.bodies == []  # no request spent on a probe
        await eng.aclose()


async def test_a_400_on_a_token_id_prompt_is_an_error_not_a_switch_to_text():
    tok = tiny_tokenizer()
    msg = "This model's maximum context length is 4096 tokens; max_tokens cannot be greater than max_model_len"
    srv = FakeServer(reject=(400, msg))
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m", tokenizer=tok)
        with pytest.raises(EngineError, match="max_tokens cannot be greater than max_model_len") as info:
            await eng.generate([1, 2, 3], 5000)
        assert "400" in str(info.value) and not isinstance(info.value, EngineUnreachable)
        # before: the engine switched to text prompts for good, losing token exactness
        assert eng.token_ids is True
        srv.reject = None
        c = await eng.generate([1, 2, 3], 4)
        assert isinstance(srv.bodies[-1]["prompt"], list) and c.meta["token_exact"]
        await eng.aclose()


async def test_a_server_without_token_id_prompts_is_found_by_the_probe():
    tok = tiny_tokenizer()
    srv = FakeServer(ids_ok=False)
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m", tokenizer=tok)
        await eng.start()
        assert eng.token_ids is False
        c = await eng.generate(tok.encode("hi"), 4)
        assert srv.bodies[-1]["prompt"] == "hi" and not c.meta["token_exact"]
        await eng.aclose()
        # without a tokenizer the text fallback is impossible: say so at start
        eng = OpenAIEngine(url, "m")
        with pytest.raises(EngineError, match="tokenizer"):
            await eng.start()
        await eng.aclose()


async def test_a_server_that_rejects_both_probes_names_its_message():
    srv = FakeServer(ids_ok=False, text_ok=False)
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m", tokenizer=tiny_tokenizer())
        with pytest.raises(EngineError, match="prompt: wrong type"):
            await eng.start()
        await eng.aclose()


async def test_closed_port_fails_at_start_with_a_clear_message_and_no_retries():
    port = free_port()
    eng = OpenAIEngine(f"http://127.0.0.1:{port}", "m", retries=5)
    with pytest.raises(EngineUnreachable, match=f"127.0.0.1:{port}.*(refused|cannot connect)") as info:
        await eng.start()
    assert "is the server running" in str(info.value)
    assert eng.retried == 0  # before: ~16 s of backoff per sample
    # generate without start() starts lazily and fails the same way; later calls fail at once
    with pytest.raises(EngineUnreachable, match="refused|cannot connect"):
        await eng.generate([1], 4)
    with pytest.raises(EngineUnreachable, match="refused|cannot connect"):
        await eng.generate([1], 4)
    assert eng.retried == 0
    await eng.aclose()


async def test_a_server_that_never_answers_fails_within_the_check_timeout():
    async with silent_server() as url:
        eng = OpenAIEngine(url, "m", check_timeout_s=0.3)
        with pytest.raises(EngineUnreachable, match=r"did not answer .*0\.3 s"):
            await eng.start()
        await eng.aclose()


async def test_a_request_that_times_out_is_not_retried():
    srv = FakeServer()
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m", timeout_s=0.3, retries=5)
        await eng.start()
    async with silent_server() as silent:
        eng.base_url = silent  # the server went silent after start
        with pytest.raises(EngineUnreachable, match=r"no answer within 0\.3 s"):
            await eng.generate([1], 4)
        assert eng.retried == 0  # before: up to 6 attempts of timeout_s each
        await eng.aclose()


@pytest.mark.parametrize("server_finish,finish", [
    ("stop", "stop"), ("length", "length"), ("eos", "stop"),
    ("abort", "abort"), (None, "abort"), ("error", "abort"),
])
async def test_finish_reasons_other_than_stop_or_length_are_abort(server_finish, finish):
    srv = FakeServer(finish=server_finish)
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m")
        c = await eng.generate([1], 4)
        assert c.finish_reason == finish and c.meta["server_finish_reason"] == server_finish
        await eng.aclose()


async def test_health_reports_the_server_and_mode():
    srv = FakeServer(models=("a", "b"))
    async with srv.running() as url:
        eng = OpenAIEngine(url, "b")
        await eng.start()
        h = await eng.health()
        assert h["ok"] and h["models"] == ["a", "b"] and h["model"] == "b" and h["token_ids"] is True
        await eng.aclose()
        await eng.aclose()  # idempotent


async def test_max_tokens_is_capped_to_the_servers_context():
    """A server that lists max_model_len refuses prompt + max_tokens beyond it (vLLM, tirl
    serve): the engine asks for what fits, and a prompt at the limit is a context stop."""
    srv = FakeServer(owner="vllm", finish="length")
    orig = srv.list_models

    async def with_context(request):
        resp = await orig(request)
        import json as _json

        data = _json.loads(resp.body)
        data["data"][0]["max_model_len"] = 10
        return web.json_response(data)

    srv.list_models = with_context
    async with srv.running() as url:
        eng = OpenAIEngine(url, "m")
        c = await eng.generate([1, 2, 3, 4], 100)
        assert srv.bodies[-1]["max_tokens"] == 6 and c.meta.get("context_limit") is True
        n = len(srv.bodies)
        full = await eng.generate(list(range(10)), 5)
        assert full.token_ids == [] and full.meta["context_limit"] and len(srv.bodies) == n
        await eng.aclose()
