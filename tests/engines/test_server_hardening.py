"""`tirl serve` under bad input, long prompts, disconnects and slow clients."""

import asyncio
import json
import logging
import socket

import aiohttp
import pytest

from tirl.engines.local import LocalEngine
from tirl.engines.server import ServeArgError, check_serve_args, served_model_names

from tests.agent.tiny import tiny_model, tiny_tokenizer
from tests.engines.serving import free_port, running


@pytest.fixture
async def local():
    tok = tiny_tokenizer()
    eng = LocalEngine(tiny_model(tok), tok, max_batch=4)
    yield eng, tok
    eng.close()


async def post(s: aiohttp.ClientSession, url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, str) else json.dumps(body)
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


async def test_a_nan_temperature_fails_alone_not_its_batch_neighbour(local):
    eng, tok = local
    async with running(eng, tok) as url, aiohttp.ClientSession() as s:
        good = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 20, "temperature": 1.0}
        bad = '{"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 20, "temperature": NaN}'
        (gs, g), (bs, b) = await asyncio.gather(post(s, url + "/v1/completions", good),
                                                post(s, url + "/v1/completions", bad))
    assert gs == 200 and len(g["choices"][0]["token_ids"]) >= 1
    assert bs == 400 and b["error"]["param"] == "temperature" and "temperature" in b["error"]["message"]


BAD = [
    ("/v1/completions", '{"prompt": "x", "top_p": NaN}', "top_p"),
    ("/v1/completions", '{"prompt": "x", "temperature": Infinity}', "temperature"),
    ("/v1/completions", {"prompt": "x", "stop": {"a": 1}}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, "stop"),
    ("/v1/completions", {"prompt": "x", "logprobs": 999}, "logprobs"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": [5, "a"]}, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": 1.5}, "n"),
    ("/v1/completions", {"prompt": "x", "top_k": True}, "top_k"),
    ("/v1/completions", {"prompt": "x", "seed": "s"}, "seed"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "x", "echo": True}, "echo"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "model": 7}, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f", "parameters": 7}}]},
     "tools[0].function.parameters"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": {"a": 1}}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "tools[0].function.name"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     "top_logprobs"),
]


@pytest.mark.parametrize("path, body, param", BAD)
async def test_bad_fields_are_400_naming_the_field(local, path, body, param):
    eng, tok = local
    async with running(eng, tok) as url, aiohttp.ClientSession() as s:
        status, data = await post(s, url + path, body)
        assert status == 400, data
        assert data["error"]["param"] == param and data["error"]["type"] == "invalid_request_error"
        assert param.split(".")[0].split("[")[0] in data["error"]["message"]
        assert eng.steps == 0  # refused before any work


async def test_unknown_model_is_404_and_both_served_names_work(local):
    eng, tok = local
    names = served_model_names("/runs/demo/checkpoints/step_100")
    assert names == ["step_100", "/runs/demo/checkpoints/step_100"]
    assert served_model_names("/m/SmolLM2.Q8.gguf") == ["SmolLM2.Q8", "/m/SmolLM2.Q8.gguf"]
    assert served_model_names("/x/y", "mine") == ["mine"]
    async with running(eng, tok, names) as url, aiohttp.ClientSession() as s:
        for name in names:
            status, data = await post(s, url + "/v1/completions", {"model": name, "prompt": [5], "max_tokens": 2})
            assert status == 200 and data["model"] == "step_100"
        status, data = await post(s, url + "/v1/completions", {"model": "step_1", "prompt": [5]})
        assert status == 404 and data["error"]["param"] == "model"
        async with s.get(url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["step_100"]


async def test_requests_that_cannot_fit_are_refused_before_any_work():
    tok = tiny_tokenizer()
    eng = LocalEngine(tiny_model(tok, max_pos=64), tok, max_batch=4)
    async with running(eng, tok) as url, aiohttp.ClientSession() as s:
        status, data = await post(s, url + "/v1/completions", {"prompt": [5] * 70, "max_tokens": 1})
        assert status == 400 and data["error"]["param"] == "prompt"
        assert "maximum context length is 64" in data["error"]["message"]
        status, data = await post(s, url + "/v1/completions", {"prompt": [5] * 60, "max_tokens": 5})
        assert status == 400 and data["error"]["param"] == "max_tokens" and "65 tokens" in data["error"]["message"]
        status, data = await post(s, url + "/v1/completions", {"prompt": [5] * 60, "max_tokens": 4,
                                                               "ignore_eos": True})
        assert status == 200 and len(data["choices"][0]["token_ids"]) == 4
        status, data = await post(s, url + "/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "What is 6 times 7? " * 20}]})
        assert status == 400 and "maximum context length" in data["error"]["message"]
    eng.close()
    budget = LocalEngine(tiny_model(tok), tok, max_batch=4, kv_budget_tokens=100)
    async with running(budget, tok) as url, aiohttp.ClientSession() as s:
        status, data = await post(s, url + "/v1/completions", {"prompt": [5] * 50, "max_tokens": 60})
        assert status == 400 and "KV budget holds 100 tokens" in data["error"]["message"]
        async with s.get(url + "/metrics") as r:
            text = await r.text()
        assert 'tirl:kv_budget_tokens{model_name="tiny"} 100' in text
        assert 'num_gpu_blocks="100"' in text and "tirl:kv_bytes_per_token" in text
    assert budget.steps == 0
    budget.close()


async def _wait_idle(eng, seconds=20.0):
    for _ in range(int(seconds / 0.02)):
        if eng.stats()["running"] == 0 and eng.stats()["waiting"] == 0:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_disconnects_cancels_its_generation(local, stream, caplog):
    eng, tok = local
    caplog.set_level(logging.INFO, logger="tirl.serve")
    async with running(eng, tok) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"prompt": [5, 6, 7], "max_tokens": 500, "ignore_eos": True, "stream": stream})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        await writer.drain()
        while eng.tokens_generated < 5:
            await asyncio.sleep(0.01)
        if stream:
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert await _wait_idle(eng)
        assert eng.tokens_generated < 500
        for _ in range(100):
            if "client went away" in caplog.text:
                break
            await asyncio.sleep(0.02)
    lines = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert len(lines) == 1 and "Traceback" not in caplog.text


async def test_slow_headers_and_slow_bodies_time_out(local):
    eng, tok = local
    async with running(eng, tok, header_timeout_s=0.5, body_timeout_s=0.5) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 10)
        assert head.startswith(b"HTTP/1.1 408")
        writer.close()


def test_check_serve_args_names_what_to_change():
    check_serve_args("127.0.0.1", free_port(), 4)
    for kw, msg in [(dict(port=99999), "not a TCP port"), (dict(port=0), "not a TCP port"),
                    (dict(max_batch=0), "--max-batch 0"), (dict(max_seq_len=-1), "--max-seq-len"),
                    (dict(threads=-2), "--threads"), (dict(kv_budget_tokens=0), "--kv-budget-tokens"),
                    (dict(host="no-such-host.invalid"), "does not resolve")]:
        args = dict(host="127.0.0.1", port=free_port(), max_batch=4) | kw
        with pytest.raises(ServeArgError, match=msg):
            check_serve_args(**args)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(ServeArgError, match="cannot listen on 127.0.0.1:.*pick another --port"):
            check_serve_args("127.0.0.1", held.getsockname()[1], 4)


def test_stable_prefix_holds_back_what_may_still_change():
    from tirl.engines.server import _stable_prefix

    assert _stable_prefix("hello wor", []) == "hello wor"
    assert _stable_prefix("hello wor", ["world"]) == "hello"  # "wor" + 1 may start "world"
    assert _stable_prefix("a...b", ["..."]) == "a"  # already stopped: cut at the stop
    assert _stable_prefix("ab.x..", [".x", "zz"]) == "ab"
    assert _stable_prefix("caf\ufffd", []) == "caf"  # a partial UTF-8 character
    assert _stable_prefix("abc", ["abcd"]) == ""
