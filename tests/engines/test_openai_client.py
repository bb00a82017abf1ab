"""`tirl serve` driven by the official `openai` Python client: a deviation from the OpenAI
API (field names, types, streaming framing, error statuses) fails here."""

import asyncio
import contextlib
import json

import openai
import pytest

from tirl.agent import format as fmt
from tirl.engines.local import LocalEngine

from tests.agent.tiny import tiny_model, tiny_tokenizer
from tests.engines.serving import Recording, running


@pytest.fixture
async def local():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    eng = LocalEngine(model, tok, max_batch=4)
    yield eng, tok
    eng.close()


@contextlib.asynccontextmanager
async def running_client(engine, tok, name="tiny"):
    async with running(engine, tok, name) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
            yield c


async def test_models_and_completions(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        assert [m.id for m in (await c.models.list()).data] == ["tiny"]
        prompt = "What is 6 times 7?"
        ids = tok.encode(prompt)
        r = await c.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, n=2,
                                       logprobs=3)
        direct = await eng.generate(ids, 6, 0.0, [tok.eos_token_id])
        assert r.object == "text_completion" and r.model == "tiny" and len(r.choices) == 2
        for ch in r.choices:
            assert ch.text == tok.decode(direct.token_ids, skip_special_tokens=True)
            assert ch.logprobs.token_logprobs == pytest.approx(direct.logprobs, abs=1e-5)
            for lp, top in zip(ch.logprobs.token_logprobs, ch.logprobs.top_logprobs):
                assert 3 <= len(top) <= 4 and max(top.values()) == pytest.approx(lp, abs=1e-5)  # greedy
        assert r.usage.prompt_tokens == len(ids)  # once, not once per choice
        assert r.usage.completion_tokens == 2 * len(direct.token_ids)
        # token-id prompts (vLLM): the token ids come back too
        r = await c.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0,
                                       extra_body={"ignore_eos": True})
        ref = await eng.generate(ids, 4, 0.0)
        assert r.choices[0].model_extra["token_ids"] == ref.token_ids


async def test_streamed_completion_equals_the_whole_one(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        kw = dict(model="tiny", prompt="Let me compute this with Python.", max_tokens=12, temperature=0,
                  logprobs=1)
        whole = await c.completions.create(**kw)
        stream = await c.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        assert text == whole.choices[0].text
        lps = [x for ch in chunks if ch.choices for x in ch.choices[0].logprobs.token_logprobs]
        assert lps == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=1e-6)
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
        assert all(ch.usage is None for ch in chunks[:-1])


async def test_chat_logprobs_with_bytes_and_top_logprobs(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        r = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "2+2?"}],
                                            max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
        ch = r.choices[0]
        assert r.object == "chat.completion" and ch.message.role == "assistant"
        ids = ch.model_extra["token_ids"]
        content = ch.logprobs.content
        assert len(content) == len(ids) == r.usage.completion_tokens
        raw = b"".join(bytes(e.bytes) for e in content)
        assert raw.decode("utf-8", "replace") == tok.decode(ids, skip_special_tokens=False)
        for e in content:
            assert len(e.top_logprobs) == 3
            assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)  # greedy: the best
            assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        no_lp = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "2+2?"}],
                                                max_tokens=8, temperature=0)
        assert no_lp.choices[0].logprobs is None and no_lp.choices[0].message.content == ch.message.content


async def test_streamed_chat_equals_the_whole_one(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        kw = dict(model="tiny", messages=[{"role": "system", "content": "short"},
                                          {"role": "user", "content": "What is 6 times 7?"}],
                  max_tokens=16, temperature=0)
        whole = await c.chat.completions.create(**kw)
        stream = await c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == (whole.choices[0].message.content or "")
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


async def test_tool_calls_whole_and_streamed():
    tok = tiny_tokenizer()
    eng = Recording(tok, ["Let me run it. " + fmt.format_tool_call("print(2+2)")])
    async with running_client(eng, tok, "scripted") as c:
        kw = dict(model="scripted", messages=[{"role": "user", "content": "2+2?"}], tools=[fmt.TOOL_SCHEMA],
                  max_tokens=200)
        r = await c.chat.completions.create(**kw)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content == "Let me run it."
        [call] = ch.message.tool_calls
        assert call.type == "function" and call.function.name == fmt.TOOL_NAME
        assert json.loads(call.function.arguments) == {"code": "print(2+2)", "input": ""}
        stream = await c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        chunks = [x async for x in stream]
        content = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
        calls = [tc for x in chunks if x.choices for tc in (x.choices[0].delta.tool_calls or [])]
        assert content == "Let me run it." and "<tool_call>" not in content
        assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
        assert calls[0].function.name == fmt.TOOL_NAME
        assert json.loads(calls[0].function.arguments) == {"code": "print(2+2)", "input": ""}
        assert [x.choices[0].finish_reason for x in chunks if x.choices][-1] == "tool_calls"
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
        # the helper that assembles a streamed reply agrees
        async with c.chat.completions.stream(**kw) as s:
            final = await s.get_final_completion()
        assert final.choices[0].message.tool_calls[0].function.name == fmt.TOOL_NAME


async def test_the_model_eos_stops_by_default_and_ignore_eos_lifts_it():
    tok = tiny_tokenizer()
    eng = Recording(tok, ["hello"])
    async with running_client(eng, tok) as c:
        await c.completions.create(model="tiny", prompt="x", max_tokens=5)
        await c.completions.create(model="tiny", prompt="x", max_tokens=5, extra_body={"ignore_eos": True})
        await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=5)
    assert tok.eos_token_id in eng.stops[0]
    assert tok.eos_token_id not in eng.stops[1]
    assert set(fmt.end_of_turn_ids(tok)) <= set(eng.stops[2])


async def test_errors_are_openai_errors(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        msgs = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.NotFoundError):
            await c.completions.create(model="nope", prompt="x", max_tokens=2)
        cases = [
            (c.completions.create, dict(prompt="x", top_p=0.0), "top_p"),
            (c.completions.create, dict(prompt="x", temperature=-1), "temperature"),
            (c.completions.create, dict(prompt="x", logprobs=999), "logprobs"),
            (c.completions.create, dict(prompt="", max_tokens=2), "prompt"),
            (c.completions.create, dict(prompt="x", max_tokens=10**6), "max_tokens"),
            (c.completions.create, dict(prompt="x", n=0), "n"),
            (c.completions.create, dict(prompt="x", presence_penalty=0.5), "presence_penalty"),
            (c.chat.completions.create, dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
            (c.chat.completions.create, dict(messages=msgs, tools=[{"type": "function", "function": {
                "name": "f", "parameters": 7}}]), "tools[0].function.parameters"),
            (c.chat.completions.create, dict(messages=msgs, top_logprobs=30, logprobs=True), "top_logprobs"),
            (c.chat.completions.create, dict(messages=msgs, tool_choice="required", tools=[fmt.TOOL_SCHEMA]),
             "tool_choice"),
        ]
        for create, kw, param in cases:
            with pytest.raises(openai.BadRequestError) as info:
                await create(model="tiny", **kw)
            assert info.value.param == param, (kw, info.value)
            assert param.split(".")[0].split("[")[0] in info.value.message
        with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
            await c.completions.create(model="tiny", prompt=[5, 6, 7] * 167, max_tokens=20)
    assert await asyncio.wait_for(eng.generate([5, 6], 2, 0.0), 30)  # still serving


async def test_streams_with_stop_strings_n_choices_and_chat_logprobs(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        base = dict(model="tiny", prompt="What is 6 times 7? Let me think.", max_tokens=24, temperature=0)
        full = (await c.completions.create(**base, extra_body={"ignore_eos": True})).choices[0].text
        assert len(full) > 12
        stop = full[6:9]  # a stop string in the middle of the greedy text
        kw = dict(base, stop=[stop], n=2)
        whole = await c.completions.create(**kw)
        stream = await c.completions.create(**kw, stream=True)
        texts = {0: "", 1: ""}
        finish = {}
        async for ch in stream:
            for x in ch.choices:
                texts[x.index] += x.text
                if x.finish_reason:
                    finish[x.index] = x.finish_reason
        assert texts == {i: whole.choices[i].text for i in (0, 1)} and stop not in texts[0]
        assert finish == {0: "stop", 1: "stop"} and whole.choices[0].model_extra["stop_reason"] == stop
        # chat: every token's logprob arrives exactly once across the chunks
        ckw = dict(model="tiny", messages=[{"role": "user", "content": "6*7?"}], max_tokens=10, temperature=0,
                   logprobs=True, top_logprobs=2)
        whole = await c.chat.completions.create(**ckw)
        stream = await c.chat.completions.create(**ckw, stream=True)
        got = [e async for ch in stream if ch.choices and ch.choices[0].logprobs
               for e in ch.choices[0].logprobs.content]
        assert [e.logprob for e in got] == pytest.approx([e.logprob for e in whole.choices[0].logprobs.content])
        assert all(len(e.top_logprobs) == 2 for e in got)


async def test_chat_stop_strings_are_cut_whole_and_streamed(local):
    eng, tok = local
    async with running_client(eng, tok) as c:
        base = dict(model="tiny", messages=[{"role": "user", "content": "What is 6 times 7?"}], max_tokens=20,
                    temperature=0)
        full = (await c.chat.completions.create(**base)).choices[0].message.content
        assert len(full) > 8
        stop = full[4:6]
        whole = await c.chat.completions.create(**base, stop=stop)
        assert whole.choices[0].message.content == full[:full.index(stop)]
        assert whole.choices[0].finish_reason == "stop"
        stream = await c.chat.completions.create(**base, stop=stop, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text == whole.choices[0].message.content
