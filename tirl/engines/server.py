"""`tirl serve`: a local model behind an OpenAI-compatible HTTP API (aiohttp).

Endpoints (see docs/agent.md for the exact fields):

* ``GET /v1/models`` — the one served model.
* ``POST /v1/completions`` — ``prompt`` as text, a list of token ids (as vLLM), or a list of
  either; ``n``; ``max_tokens``; ``temperature``/``top_p``/``top_k``; ``stop`` strings and
  ``stop_token_ids``; ``logprobs``. Each choice carries ``token_ids`` and, when ``logprobs``
  is set, ``logprobs.tokens`` / ``token_logprobs`` (``"token_id:N"`` tokens with
  ``return_tokens_as_token_ids``), so clients are token-exact.
* ``POST /v1/chat/completions`` — ``messages`` (+ ``tools``) rendered with the model's chat
  template (ChatML when it has none); ``<tool_call>`` blocks in the reply come back as
  OpenAI ``tool_calls`` (hermes format), ``finish_reason = "tool_calls"``.
* ``GET /metrics`` — Prometheus text with vLLM's names: ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a fraction, as vLLM's),
  ``vllm:cache_config_info{block_size, num_gpu_blocks}`` (capacity = their product, tokens).
* ``GET /health`` — 200 once the model is loaded.

What it does not do: streaming, ``echo``, top-k alternatives in ``top_logprobs`` (only the
sampled token is listed), authentication, or more than one model per process.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

from aiohttp import web

from tirl.engines import chatml as fmt

_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class BadRequest(Exception):
    pass


def _err(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _num(body: dict, key: str, default: Any, cast=float, lo=None, hi=None):
    v = body.get(key, default)
    if v is None:
        v = default
    try:
        v = cast(v)
    except (TypeError, ValueError):
        raise BadRequest(f"{key!r} must be a {cast.__name__}, got {body.get(key)!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadRequest(f"{key!r} = {v} is out of range [{lo}, {hi}]")
    return v


class ModelServer:
    """Holds the engine and tokenizer; its methods are the HTTP handlers."""

    def __init__(self, engine, tokenizer, served_name: str, default_max_tokens: int = 16):
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = served_name
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self.requests_total = 0
        self.tokens_total = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([
            web.get("/v1/models", self.models),
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat),
            web.get("/metrics", self.metrics),
            web.get("/health", self.health),
        ])
        return app

    # ------------------------------------------------------------------ simple endpoints

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.name})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.name, "object": "model", "created": self.created, "owned_by": "tirl",
            "max_model_len": self.engine.max_seq_len,
        }]})

    async def metrics(self, request: web.Request) -> web.Response:
        s = self.engine.stats()
        lab = f'model_name="{self.name}"'
        lines = [
            "# HELP vllm:num_requests_running Requests being decoded.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lab}}} {s['running']}",
            "# HELP vllm:num_requests_waiting Requests waiting for a batch row.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{lab}}} {s['waiting']}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage (1 = 100 percent).",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{lab}}} {s['kv_usage']:.6f}",
            "# HELP vllm:cache_config_info KV-cache capacity: num_gpu_blocks * block_size tokens.",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{{lab},block_size="1",num_gpu_blocks="{s["kv_capacity_tokens"]}"}} 1',
            "# TYPE tirl:kv_used_tokens gauge",
            f"tirl:kv_used_tokens{{{lab}}} {s['kv_used_tokens']}",
            "# TYPE tirl:requests_total counter",
            f"tirl:requests_total{{{lab}}} {self.requests_total}",
            "# TYPE tirl:generation_tokens_total counter",
            f"tirl:generation_tokens_total{{{lab}}} {self.tokens_total}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # ------------------------------------------------------------------ completions

    async def _read_body(self, request: web.Request) -> dict:
        """The request's JSON object, for this server's model, not streamed (else BadRequest)."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        self._check_model(body)
        if body.get("stream"):
            raise BadRequest("stream=true is not supported by tirl serve; send stream=false")
        return body

    def _check_model(self, body: dict) -> None:
        m = body.get("model")
        if m not in (None, "", self.name):
            raise BadRequest(f"model {m!r} is not served here; this server serves {self.name!r}")

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            return [list(self.tokenizer.encode(prompt, add_special_tokens=False))]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            out = []
            for p in prompt:
                out.extend(self._prompts(p))
            return out
        raise BadRequest("'prompt' must be a string, a list of token ids, or a non-empty list of these")

    def _sampling(self, body: dict) -> dict:
        top_k = int(_num(body, "top_k", 0, int))
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        stop_ids = body.get("stop_token_ids") or []
        if not all(isinstance(s, str) for s in stop) or not all(isinstance(s, int) for s in stop_ids):
            raise BadRequest("'stop' must be strings and 'stop_token_ids' integers")
        return {
            "temperature": _num(body, "temperature", 1.0, float, 0.0, 5.0),
            "top_p": _num(body, "top_p", 1.0, float, 1e-6, 1.0),
            "top_k": max(0, top_k),
            "stop": list(stop) + list(stop_ids),
        }

    async def _run(self, prompt_ids: list[int], max_tokens: int, sampling: dict):
        s = dict(sampling)
        return await self.engine.generate(prompt_ids, max_tokens, s.pop("temperature"), s.pop("stop"), **s)

    def _text(self, comp, body: dict) -> str:
        skip = bool(body.get("skip_special_tokens", True))
        text = self.tokenizer.decode(comp.token_ids, skip_special_tokens=skip)
        if isinstance(comp.stop_reason, str) and not body.get("include_stop_str_in_output", False):
            i = text.find(comp.stop_reason)
            if i >= 0:
                text = text[:i]
        return text

    def _logprobs(self, comp, body: dict) -> dict:
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
        if as_ids:
            tokens = [f"token_id:{t}" for t in comp.token_ids]
        else:
            tokens = [self.tokenizer.decode([t], skip_special_tokens=False) for t in comp.token_ids]
        offsets, pos = [], 0
        for t in comp.token_ids:
            offsets.append(pos)
            pos += len(self.tokenizer.decode([t], skip_special_tokens=False))
        lps = list(comp.logprobs or [])
        return {"tokens": tokens, "token_logprobs": lps,
                "top_logprobs": [{tok: lp} for tok, lp in zip(tokens, lps)], "text_offset": offsets}

    async def completions(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_body(request)
            if body.get("echo"):
                raise BadRequest("echo=true is not supported by tirl serve")
            prompts = self._prompts(body.get("prompt"))
            n = int(_num(body, "n", 1, int, 1, 256))
            max_tokens = int(_num(body, "max_tokens", self.default_max_tokens, int, 1, 10**7))
            sampling = self._sampling(body)
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for p in prompts for t in p):
                raise BadRequest(f"prompt token ids must be in [0, {vocab})")
        except BadRequest as err:
            return _err(400, str(err))
        self.requests_total += 1
        jobs = [self._run(p, max_tokens, sampling) for p in prompts for _ in range(n)]
        comps = await asyncio.gather(*jobs)
        want_lp = body.get("logprobs") is not None and body.get("logprobs") is not False
        choices = []
        n_out = 0
        for i, comp in enumerate(comps):
            n_out += len(comp.token_ids)
            choices.append({
                "index": i,
                "text": self._text(comp, body),
                "token_ids": comp.token_ids,
                "logprobs": self._logprobs(comp, body) if want_lp else None,
                "finish_reason": comp.finish_reason,
                "stop_reason": comp.stop_reason,
            })
        self.tokens_total += n_out
        n_in = sum(len(p) for p in prompts) * n
        return web.json_response({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.name, "choices": choices,
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        })

    # ------------------------------------------------------------------ chat

    def render_chat(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        msgs = [_chat_message(m) for m in messages]
        tok = self.tokenizer
        if fmt.has_chat_template(tok):
            kw = {"tools": tools} if tools else {}
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
            if tools and not any(t.get("function", {}).get("name", "") in text for t in tools):
                msgs = _with_tool_system(msgs, tools)
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            if tools:
                msgs = _with_tool_system(msgs, tools)
            text = "".join(f"{fmt.IM_START}{m['role'] if m['role'] != 'tool' else 'user'}\n"
                           f"{_tool_wrap(m)}{fmt.IM_END}\n" for m in msgs) + f"{fmt.IM_START}assistant\n"
        return list(tok.encode(text, add_special_tokens=False))

    async def chat(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("'messages' must be a non-empty list")
            prompt = self.render_chat(messages, body.get("tools"))
            room = self.engine.max_seq_len - len(prompt)
            max_tokens = int(_num(body, "max_tokens", body.get("max_completion_tokens") or max(1, min(room, 1024)),
                                  int, 1, 10**7))
            n = int(_num(body, "n", 1, int, 1, 64))
            sampling = self._sampling(body)
            sampling["stop"] = sampling["stop"] + fmt.end_of_turn_ids(self.tokenizer)
        except BadRequest as err:
            return _err(400, str(err))
        except Exception as err:  # noqa: BLE001 - e.g. a template that rejects the messages
            return _err(400, f"could not render the messages: {err}")
        self.requests_total += 1
        comps = await asyncio.gather(*(self._run(prompt, max_tokens, sampling) for _ in range(n)))
        choices = []
        n_out = 0
        for i, comp in enumerate(comps):
            n_out += len(comp.token_ids)
            eot = set(fmt.end_of_turn_ids(self.tokenizer))
            text = self.tokenizer.decode([t for t in comp.token_ids if t not in eot], skip_special_tokens=False)
            calls = []
            for m in _CALL_RE.finditer(text):
                try:
                    obj = json.loads(m.group(1).strip())
                    name, args = obj["name"], obj.get("arguments", {})
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # left in the content for the client to see
                calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(args)}})
            content = _CALL_RE.sub("", text).strip() if calls else text
            msg: dict[str, Any] = {"role": "assistant", "content": content or None}
            if calls:
                msg["tool_calls"] = calls
            choice = {"index": i, "message": msg, "token_ids": comp.token_ids,
                      "finish_reason": "tool_calls" if calls else comp.finish_reason}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [
                    {"token": self.tokenizer.decode([t], skip_special_tokens=False), "logprob": lp,
                     "token_id": t}
                    for t, lp in zip(comp.token_ids, comp.logprobs or [])]}
            choices.append(choice)
        self.tokens_total += n_out
        n_in = len(prompt) * n
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name, "choices": choices,
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        })


def _chat_message(m: dict) -> dict:
    """An OpenAI message with assistant ``tool_calls`` folded into hermes text."""
    if not isinstance(m, dict) or "role" not in m:
        raise BadRequest(f"each message needs a 'role': {str(m)[:100]}")
    content = m.get("content") or ""
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    out = {"role": m["role"], "content": content}
    for c in m.get("tool_calls") or []:
        f = c.get("function", {})
        args = f.get("arguments", "{}")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass
        out["content"] += ("\n" if out["content"] else "") + "<tool_call>\n" + json.dumps(
            {"name": f.get("name"), "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
    return out


def _tool_wrap(m: dict) -> str:
    if m["role"] == "tool" and "<tool_response>" not in m["content"]:
        return "<tool_response>\n" + m["content"] + "\n</tool_response>"
    return m["content"]


def _with_tool_system(msgs: list[dict], tools: list[dict]) -> list[dict]:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    note = ("# Tools\n\nYou may call functions. Their signatures are inside <tools></tools>:\n<tools>\n"
            f"{listing}\n</tools>\n\nFor each call, write a JSON object with the function name and "
            'arguments inside <tool_call></tool_call>: <tool_call>{"name": ..., "arguments": {...}}</tool_call>')
    if msgs and msgs[0]["role"] == "system":
        return [{"role": "system", "content": msgs[0]["content"] + "\n\n" + note}] + msgs[1:]
    return [{"role": "system", "content": note}] + msgs


async def serve(engine, tokenizer, name: str, host: str = "127.0.0.1", port: int = 8000,
                ready: asyncio.Event | None = None) -> None:
    """Run the server until cancelled."""
    runner = web.AppRunner(ModelServer(engine, tokenizer, name).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
