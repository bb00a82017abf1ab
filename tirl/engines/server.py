"""`tirl serve`: a local model behind an OpenAI-compatible HTTP API (aiohttp).

Endpoints (see docs/agent.md for the exact fields):

* ``GET /v1/models`` — the one served model (``max_model_len`` = the context).
* ``POST /v1/completions`` — ``prompt`` as text, a list of token ids (as vLLM), or a list of
  either; ``n``; ``max_tokens``; ``temperature``/``top_p``/``top_k``/``seed``; ``stop``
  strings and ``stop_token_ids``; ``ignore_eos``; ``logprobs = N`` (0..20: the sampled token
  and the N most likely); ``stream`` (+ ``stream_options.include_usage``). Each choice carries
  ``token_ids``; ``logprobs.tokens`` are ``"token_id:N"`` with ``return_tokens_as_token_ids``,
  so clients are token-exact.
* ``POST /v1/chat/completions`` — ``messages`` (+ ``tools``) rendered with the model's chat
  template (ChatML when it has none); ``<tool_call>`` blocks in the reply come back as
  OpenAI ``tool_calls`` (hermes format), ``finish_reason = "tool_calls"``; ``logprobs`` +
  ``top_logprobs = N`` with ``bytes``; ``stream`` (tool calls in the final chunks).
* ``GET /metrics`` — Prometheus text with vLLM's names: ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a fraction, as vLLM's),
  ``vllm:cache_config_info{block_size, num_gpu_blocks}`` (capacity = their product, tokens:
  the engine's KV budget), and ``tirl:kv_budget_tokens`` / ``tirl:kv_allocated_tokens`` /
  ``tirl:kv_peak_tokens`` / ``tirl:kv_bytes_per_token``.
* ``GET /health`` — 200 once the model is loaded.

Every request is checked before any work: a bad field is a 400 whose message and ``param``
name it, an unknown model a 404, and a request whose ``len(prompt) + max_tokens`` exceeds
the context (or the engine's KV budget) a 400. Generation stops at the model's EOS /
end-of-turn token unless ``ignore_eos``. A client that disconnects cancels its generation
(one log line); a client that sends its headers or body too slowly is cut off.

What it does not do: ``echo``, ``best_of``, penalties, ``logit_bias``, ``tool_choice`` other
than ``auto``/``none``, structured outputs (each is refused with a 400, not ignored),
authentication, or more than one model per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from aiohttp import web

from tirl.engines import chatml as fmt

log = logging.getLogger("tirl.serve")

_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_CALL_OPEN = "<tool_call>"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_LOGPROBS = 20
LOGPROB_FLOOR = -9999.0  # -inf (a filtered-out token) as JSON can carry it, as vLLM


class BadRequest(Exception):
    """A request the client can fix: HTTP ``status`` with a message naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


class ServeArgError(ValueError):
    """A `tirl serve` setting that cannot work (the message says what to change)."""


def _err(status: int, message: str, kind: str = "invalid_request_error",
         param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": status}},
                             status=status)


# ---------------------------------------------------------------------- field parsing

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(body: dict, key: str, default: Any, lo: int, hi: int | None = None) -> Any:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise BadRequest(f"'{key}' must be an integer {rng}, got {v!r}", key)
    return v


def _float(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v > hi or v < lo or (lo_open and v == lo):
        rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise BadRequest(f"'{key}' must be a finite number in {rng}, got {v!r}", key)
    return float(v)


def _bool(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"'{key}' must be true or false, got {v!r}", key)
    return v


# fields this server refuses unless they hold their no-op value (never accepted and ignored)
_UNSUPPORTED = {
    "echo": (False,), "best_of": (1,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0), "logit_bias": ({},), "suffix": ("",), "min_p": (0, 0.0),
    "min_tokens": (0,), "response_format": ({"type": "text"},), "guided_json": (), "guided_regex": (),
    "guided_choice": (), "guided_grammar": (), "prompt_logprobs": (0,), "use_beam_search": (False,),
}


def _refuse_unsupported(body: dict) -> None:
    for key, fine in _UNSUPPORTED.items():
        v = body.get(key)
        if v is not None and v not in fine:
            raise BadRequest(f"'{key}' = {json.dumps(v)[:80]} is not supported by tirl serve; leave it out", key)


@dataclass
class _Sampling:
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop_strs: list[str]
    stop_ids: list[int]
    eos_ids: list[int]  # stop ids added for the model's end of sequence (not the client's)
    top_n: int = 0

    def engine_stop(self) -> list[str | int]:
        return list(self.stop_strs) + list(dict.fromkeys(self.stop_ids + self.eos_ids))


@dataclass
class _Job:
    """One choice being generated: its tokens so far and what was sent of them."""

    index: int
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    tops: list[list] = field(default_factory=list)
    sent_tokens: int = 0
    sent_text: str = ""
    done: Any = None  # the Completion, or the exception that ended it
    closed: bool = False  # its last chunk (or its error) was sent


def served_model_names(model: str, served_name: str | None = None) -> list[str]:
    """The names clients may send: ``served_name`` if given; else the checkpoint's directory
    (or file) name first, then the path as given. The first is what responses carry."""
    if served_name:
        return [served_name]
    p = Path(model.rstrip("/")) if model not in ("", "/") else Path(model)
    short = p.stem if p.suffix == ".gguf" else p.name
    return list(dict.fromkeys([short or model, model]))


def check_serve_args(host: str, port: int, max_batch: int, max_seq_len: int = 0, threads: int = 0,
                     kv_budget_tokens: int | None = None) -> None:
    """Check `tirl serve` settings before the model loads: raise :class:`ServeArgError` with
    what to change for a port out of range or in use, a host that does not resolve, or a
    batch / context / thread / KV-budget setting that cannot work."""
    if not _is_int(port) or not 0 < port < 65536:
        raise ServeArgError(f"--port {port} is not a TCP port; give one in 1..65535")
    if not _is_int(max_batch) or max_batch < 1:
        raise ServeArgError(f"--max-batch {max_batch}: give the number of sequences decoded together, >= 1")
    if not _is_int(max_seq_len) or max_seq_len < 0:
        raise ServeArgError(f"--max-seq-len {max_seq_len}: give a context length >= 1, or 0 for the model's")
    if not _is_int(threads) or threads < 0:
        raise ServeArgError(f"--threads {threads}: give a thread count >= 1, or 0 for the default")
    if kv_budget_tokens is not None and (not _is_int(kv_budget_tokens) or kv_budget_tokens < 1):
        raise ServeArgError(f"--kv-budget-tokens {kv_budget_tokens}: give KV-cache positions >= 1, "
                            "or leave it out for the default")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ServeArgError(f"--host {host!r} does not resolve ({err.strerror}); "
                            "give an address such as 127.0.0.1 or 0.0.0.0") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            try:
                s.bind(addr)
            except OSError as err:
                raise ServeArgError(f"cannot listen on {host}:{port}: {err.strerror}; "
                                    "pick another --port (or stop what holds it)") from None


# ---------------------------------------------------------------------- token text

def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()
_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class ModelServer:
    """Holds the engine and tokenizer; its methods are the HTTP handlers.

    ``names``: the model names clients may send (the first is the one responses carry), see
    :func:`served_model_names`; ``body_timeout_s``: how long a request body may take."""

    def __init__(self, engine, tokenizer, served_name: str | list[str], default_max_tokens: int = 16,
                 body_timeout_s: float = 30.0):
        self.engine = engine
        self.tokenizer = tokenizer
        self.names = [served_name] if isinstance(served_name, str) else list(served_name)
        self.name = self.names[0]
        self.default_max_tokens = default_max_tokens
        self.body_timeout_s = body_timeout_s
        self.created = int(time.time())
        self.requests_total = 0
        self.tokens_total = 0
        self.cancelled_total = 0
        params = inspect.signature(engine.generate).parameters
        self._engine_tops = "top_logprobs" in params
        self._engine_streams = "on_token" in params
        self.vocab = len(tokenizer)
        self.eos_ids = self._eos_ids()
        self._byte_level = "ByteLevel" in type(getattr(getattr(tokenizer, "backend_tokenizer", None),
                                                       "decoder", None)).__name__

    def _eos_ids(self) -> list[int]:
        ids = []
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if _is_int(eos):
            ids.append(eos)
        gen = getattr(getattr(getattr(self.engine, "model", None), "generation_config", None), "eos_token_id", None)
        for t in gen if isinstance(gen, list) else [gen]:
            if _is_int(t) and t not in ids:
                ids.append(t)
        return ids

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

    @property
    def context(self) -> int:
        return int(self.engine.max_seq_len)

    def max_request_tokens(self) -> int:
        f = getattr(self.engine, "max_request_tokens", None)
        return int(f()) if callable(f) else self.context

    # ------------------------------------------------------------------ simple endpoints

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.name})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.name, "object": "model", "created": self.created, "owned_by": "tirl",
            "max_model_len": self.context,
        }]})

    async def metrics(self, request: web.Request) -> web.Response:
        s = self.engine.stats()
        lab = f'model_name="{self.name}"'
        cap = s["kv_capacity_tokens"]
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
            f'vllm:cache_config_info{{{lab},block_size="1",num_gpu_blocks="{cap}"}} 1',
            "# HELP tirl:kv_budget_tokens KV positions the engine may allocate (its memory bound).",
            "# TYPE tirl:kv_budget_tokens gauge",
            f"tirl:kv_budget_tokens{{{lab}}} {cap}",
            "# TYPE tirl:kv_bytes_per_token gauge",
            f"tirl:kv_bytes_per_token{{{lab}}} {s.get('kv_bytes_per_token', 0)}",
            "# TYPE tirl:kv_allocated_tokens gauge",
            f"tirl:kv_allocated_tokens{{{lab}}} {s.get('kv_allocated_tokens', 0)}",
            "# TYPE tirl:kv_peak_tokens gauge",
            f"tirl:kv_peak_tokens{{{lab}}} {s.get('kv_peak_tokens', 0)}",
            "# TYPE tirl:kv_used_tokens gauge",
            f"tirl:kv_used_tokens{{{lab}}} {s['kv_used_tokens']}",
            "# TYPE tirl:requests_total counter",
            f"tirl:requests_total{{{lab}}} {self.requests_total}",
            "# TYPE tirl:requests_cancelled_total counter",
            f"tirl:requests_cancelled_total{{{lab}}} {self.cancelled_total}",
            "# TYPE tirl:generation_tokens_total counter",
            f"tirl:generation_tokens_total{{{lab}}} {self.tokens_total}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # ------------------------------------------------------------------ request checks

    async def _read_body(self, request: web.Request) -> dict:
        """The request's JSON object for this server's model (else BadRequest)."""
        try:
            raw = await asyncio.wait_for(request.read(), self.body_timeout_s)
        except asyncio.TimeoutError:
            raise BadRequest(f"the request body did not arrive within {self.body_timeout_s:g} s",
                             status=408) from None
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        self._check_model(body)
        _refuse_unsupported(body)
        return body

    def _check_model(self, body: dict) -> None:
        m = body.get("model")
        if m in (None, ""):
            return
        if not isinstance(m, str):
            raise BadRequest(f"'model' must be a string, got {m!r}", "model")
        if m not in self.names:
            raise BadRequest(f"The model `{m}` does not exist; this server serves {self.name!r}",
                             "model", status=404, kind="NotFoundError")

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise BadRequest("'prompt' is empty; give some text or token ids", "prompt")
            return [list(self.tokenizer.encode(prompt, add_special_tokens=False))]
        if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.vocab]
            if bad:
                raise BadRequest(f"'prompt' token id {bad[0]} is outside the vocabulary [0, {self.vocab})", "prompt")
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            out = []
            for p in prompt:
                out.extend(self._prompts(p))
            return out
        raise BadRequest("'prompt' must be a non-empty string, a list of token ids, or a non-empty list "
                         f"of these; got {json.dumps(prompt)[:80]}", "prompt")

    def _sampling(self, body: dict) -> _Sampling:
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest(f"'stop' must be a non-empty string or a list of them, got {json.dumps(stop)[:80]}",
                             "stop")
        stop_ids = body.get("stop_token_ids") or []
        if not isinstance(stop_ids, list) or not all(_is_int(t) and 0 <= t < self.vocab for t in stop_ids):
            raise BadRequest(f"'stop_token_ids' must be a list of token ids in [0, {self.vocab}), "
                             f"got {json.dumps(stop_ids)[:80]}", "stop_token_ids")
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
        top_k = _int(body, "top_k", 0, -1)
        return _Sampling(
            temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
            top_k=max(0, top_k),  # vLLM: -1 = off
            seed=seed, stop_strs=list(stop), stop_ids=list(stop_ids),
            eos_ids=[] if _bool(body, "ignore_eos") else list(self.eos_ids),
        )

    def _check_room(self, prompt_len: int, max_tokens: int) -> None:
        ctx, limit = self.context, self.max_request_tokens()
        if prompt_len + max_tokens > limit:
            what = (f"This model's maximum context length is {ctx} tokens" if limit >= ctx else
                    f"This server's KV budget holds {limit} tokens per request")
            raise BadRequest(f"{what}. However, you requested {prompt_len + max_tokens} tokens "
                             f"({prompt_len} in the prompt, {max_tokens} in the completion). "
                             "Shorten the prompt or lower max_tokens.",
                             "max_tokens" if prompt_len < limit else "prompt")

    def _gen_kwargs(self, sampling: _Sampling, on_token=None) -> dict:
        kw: dict[str, Any] = {"top_p": sampling.top_p, "top_k": sampling.top_k, "seed": sampling.seed}
        if sampling.top_n:
            kw["top_logprobs"] = sampling.top_n
        if on_token is not None and self._engine_streams:
            kw["on_token"] = on_token
        return kw

    def _logprobs_n(self, body: dict, chat: bool) -> int:
        """How many alternatives per token the request wants (-1: no logprobs)."""
        if chat:
            if not _bool(body, "logprobs"):
                if body.get("top_logprobs") not in (None, 0):
                    raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
                return -1
            n = _int(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
        else:
            v = body.get("logprobs")
            if v is None or v is False:
                return -1
            n = 1 if v is True else _int(body, "logprobs", 0, 0, MAX_LOGPROBS)
        if n and not self._engine_tops:
            raise BadRequest("this engine gives no alternative tokens; ask for logprobs without top_logprobs",
                             "top_logprobs" if chat else "logprobs")
        return n

    def _stream_opts(self, body: dict) -> tuple[bool, bool]:
        stream = _bool(body, "stream")
        opts = body.get("stream_options")
        if opts is None:
            return stream, False
        if not stream:
            raise BadRequest("'stream_options' is only allowed with 'stream': true", "stream_options")
        if not isinstance(opts, dict):
            raise BadRequest("'stream_options' must be an object", "stream_options")
        return stream, _bool(opts, "include_usage")

    # ------------------------------------------------------------------ generation

    async def _gather(self, rid: str, jobs: list[_Job], max_tokens: int, sampling: _Sampling) -> web.Response | None:
        """Run the jobs to the end; an error response if one failed (a cancelled handler —
        the client went away — cancels them all and logs one line)."""
        async def one(j: _Job):
            j.done = await self.engine.generate(j.prompt, max_tokens, sampling.temperature,
                                                sampling.engine_stop(), **self._gen_kwargs(sampling))
        try:
            results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
        except asyncio.CancelledError:
            self._disconnected(rid, jobs)
            raise
        errs = [e for e in results if isinstance(e, BaseException)]
        for e in errs:
            if isinstance(e, asyncio.CancelledError):
                raise e
        if errs:
            e = errs[0]
            if isinstance(e, ValueError):
                return _err(400, str(e))
            log.error("generation failed: %s: %s", type(e).__name__, e)
            return _err(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
        return None

    async def _events(self, jobs: list[_Job], max_tokens: int, sampling: _Sampling) -> AsyncIterator[list[_Job]]:
        """Run the jobs; yield those with news (new tokens, or done) as it arrives. Leaving
        early (a client gone) cancels what still runs."""
        wake = asyncio.Event()

        def runner(j: _Job):
            def on_token(t: int, lp: float, top) -> None:
                j.tokens.append(t)
                j.lps.append(lp)
                if top is not None:
                    j.tops.append(top)
                wake.set()

            async def go():
                try:
                    j.done = await self.engine.generate(j.prompt, max_tokens, sampling.temperature,
                                                        sampling.engine_stop(),
                                                        **self._gen_kwargs(sampling, on_token))
                except Exception as err:  # noqa: BLE001 - reported to the client in the stream
                    j.done = err
                wake.set()
            return asyncio.create_task(go())

        tasks = [runner(j) for j in jobs]
        try:
            while True:
                await wake.wait()
                wake.clear()
                news = [j for j in jobs if not j.closed and (j.done is not None or len(j.tokens) > j.sent_tokens)]
                if news:
                    yield news
                if all(j.closed for j in jobs):
                    return
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _disconnected(self, what: str, jobs: list[_Job]) -> None:
        self.cancelled_total += 1
        n = sum(len(j.done.token_ids) if j.done is not None and not isinstance(j.done, BaseException)
                else len(j.tokens) for j in jobs)
        log.info("client went away: cancelled %s after %d generated tokens", what, n)

    def _text(self, comp, body: dict) -> str:
        skip = _bool(body, "skip_special_tokens", True)
        text = self.tokenizer.decode(comp.token_ids, skip_special_tokens=skip)
        if isinstance(comp.stop_reason, str) and not _bool(body, "include_stop_str_in_output"):
            i = text.find(comp.stop_reason)
            if i >= 0:
                text = text[:i]
        return text

    def _stable_text(self, tokens: list[int], body: dict, stops: list[str]) -> str:
        """The text of ``tokens`` that no later token can change: without a trailing partial
        UTF-8 character nor a tail that may still grow into a stop string."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=_bool(body, "skip_special_tokens", True))
        return _stable_prefix(text, stops)

    def _stop_reason(self, comp, sampling: _Sampling):
        r = comp.stop_reason
        if _is_int(r) and r in sampling.eos_ids and r not in sampling.stop_ids:
            return None  # the model's own end of sequence, as vLLM reports it
        return r

    def _token_str(self, t: int, as_ids: bool = False) -> str:
        return f"token_id:{t}" if as_ids else self.tokenizer.decode([t], skip_special_tokens=False)

    def _token_bytes(self, t: int) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(t)
        if isinstance(piece, str):
            if self._byte_level and all(c in _BYTES for c in piece):
                return [_BYTES[c] for c in piece]
            m = _HEX_BYTE.match(piece)
            if m:
                return [int(m.group(1), 16)]
            if not self._byte_level:
                return list(piece.replace("\u2581", " ").encode("utf-8"))
        return list(self.tokenizer.decode([t], skip_special_tokens=False).encode("utf-8"))

    def _completion_logprobs(self, tokens: list[int], lps: list[float], tops: list, body: dict,
                             offset0: int = 0) -> dict:
        as_ids = _bool(body, "return_tokens_as_token_ids")
        strs = [self._token_str(t, as_ids) for t in tokens]
        offsets, pos = [], offset0
        for t in tokens:
            offsets.append(pos)
            pos += len(self.tokenizer.decode([t], skip_special_tokens=False))
        top_dicts = []
        for k, (s, lp) in enumerate(zip(strs, lps)):
            d = {s: max(lp, LOGPROB_FLOOR)}
            for tid, tlp in (tops[k] if k < len(tops) else []):
                d.setdefault(self._token_str(tid, as_ids), max(tlp, LOGPROB_FLOOR))
            top_dicts.append(d)
        return {"tokens": strs, "token_logprobs": [max(x, LOGPROB_FLOOR) for x in lps],
                "top_logprobs": top_dicts, "text_offset": offsets}

    def _chat_logprobs(self, tokens: list[int], lps: list[float], tops: list) -> dict:
        content = []
        for k, (t, lp) in enumerate(zip(tokens, lps)):
            alts = tops[k] if k < len(tops) else []
            content.append({
                "token": self._token_str(t), "logprob": max(lp, LOGPROB_FLOOR), "bytes": self._token_bytes(t),
                "token_id": t,
                "top_logprobs": [{"token": self._token_str(a), "logprob": max(alp, LOGPROB_FLOOR),
                                  "bytes": self._token_bytes(a)} for a, alp in alts],
            })
        return {"content": content}

    # ------------------------------------------------------------------ completions

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            prompts = self._prompts(body.get("prompt"))
            n = _int(body, "n", 1, 1, 128)
            max_tokens = _int(body, "max_tokens", self.default_max_tokens, 1)
            sampling = self._sampling(body)
            top_n = self._logprobs_n(body, chat=False)
            sampling.top_n = max(0, top_n)
            stream, include_usage = self._stream_opts(body)
            for p in prompts:
                self._check_room(len(p), max_tokens)
        except BadRequest as err:
            return _err(err.status, str(err), err.kind, err.param)
        self.requests_total += 1
        rid = f"cmpl-{uuid.uuid4().hex}"
        jobs = [_Job(i, p) for i, p in enumerate(q for q in prompts for _ in range(n))]
        n_in = sum(len(p) for p in prompts)
        if stream:
            return await self._stream_completions(request, rid, body, jobs, max_tokens, sampling,
                                                  top_n >= 0, include_usage, n_in)
        failed = await self._gather(rid, jobs, max_tokens, sampling)
        if failed is not None:
            return failed
        choices, n_out = [], 0
        for j in jobs:
            comp = j.done
            n_out += len(comp.token_ids)
            choices.append({
                "index": j.index,
                "text": self._text(comp, body),
                "token_ids": comp.token_ids,
                "logprobs": self._completion_logprobs(comp.token_ids, comp.logprobs or [],
                                                      comp.meta.get("top_logprobs") or [], body)
                if top_n >= 0 else None,
                "finish_reason": comp.finish_reason,
                "stop_reason": self._stop_reason(comp, sampling),
            })
        self.tokens_total += n_out
        return web.json_response({
            "id": rid, "object": "text_completion", "created": int(time.time()),
            "model": self.name, "choices": choices,
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        })

    async def _sse_start(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, obj: Any) -> None:
        await resp.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

    async def _stream(self, request, rid: str, obj: str, jobs, max_tokens, sampling, include_usage: bool,
                      n_in: int, choices_of, *, opening: list[dict] | None = None,
                      one_per_chunk: bool = False) -> web.StreamResponse:
        """Server-sent events for completions and chat alike: each engine update of a job
        becomes the choices ``choices_of(job, completion|None, tokens, logprobs, tops, new)``
        returns; a failed job sends an error event; usage (``include_usage``) and ``[DONE]``
        close the stream; a client that disconnects cancels its jobs."""
        resp = await self._sse_start(request)
        created = int(time.time())

        def chunk(choices: list[dict], usage: dict | None = None) -> dict:
            out = {"id": rid, "object": obj, "created": created, "model": self.name, "choices": choices}
            if include_usage:
                out["usage"] = usage
            return out

        try:
            if opening is not None:
                await self._send(resp, chunk(opening))
            async with contextlib.aclosing(self._events(jobs, max_tokens, sampling)) as events:
                async for news in events:
                    choices = []
                    for j in news:
                        if isinstance(j.done, BaseException):
                            await self._send(resp, {"error": {"message": str(j.done), "type": "server_error",
                                                              "param": None, "code": 500}})
                            j.closed = True
                            continue
                        j.closed = j.done is not None
                        comp = j.done
                        toks = comp.token_ids if comp is not None else j.tokens
                        lps = (comp.logprobs or []) if comp is not None else j.lps
                        tops = (comp.meta.get("top_logprobs") or []) if comp is not None else j.tops
                        choices += choices_of(j, comp, toks, lps, tops, slice(j.sent_tokens, len(toks)))
                    for group in ([[c] for c in choices] if one_per_chunk else [choices] if choices else []):
                        await self._send(resp, chunk(group))
            n_out = sum(len(j.done.token_ids) for j in jobs if not isinstance(j.done, BaseException))
            self.tokens_total += n_out
            if include_usage:
                await self._send(resp, chunk([], {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                  "total_tokens": n_in + n_out}))
            await self._send(resp, b"[DONE]")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self._disconnected(rid, jobs)
            raise asyncio.CancelledError() from None
        return resp

    async def _stream_completions(self, request, rid, body, jobs, max_tokens, sampling, want_lp,
                                  include_usage, n_in) -> web.StreamResponse:
        def choices_of(j, comp, toks, lps, tops, new) -> list[dict]:
            text = self._text(comp, body) if comp is not None else \
                self._stable_text(toks, body, sampling.stop_strs)
            delta = text[len(j.sent_text):] if text.startswith(j.sent_text) else ""
            if not delta and comp is None and new.start == new.stop:
                return []
            c = {"index": j.index, "text": delta, "token_ids": toks[new],
                 "logprobs": self._completion_logprobs(toks[new], lps[new], tops[new], body,
                                                       len(j.sent_text)) if want_lp else None,
                 "finish_reason": comp.finish_reason if comp is not None else None,
                 "stop_reason": self._stop_reason(comp, sampling) if comp is not None else None}
            j.sent_text += delta
            j.sent_tokens = len(toks)
            return [c]

        return await self._stream(request, rid, "text_completion", jobs, max_tokens, sampling,
                                  include_usage, n_in, choices_of)

    # ------------------------------------------------------------------ chat

    def render_chat(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        msgs = [_chat_message(m, i) for i, m in enumerate(messages)]
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

    def _reply(self, comp, tools_on: bool, keep_stop: bool = False) -> tuple[str | None, list[dict]]:
        """(content, tool_calls) of a finished chat reply (the stop string cut off unless
        ``keep_stop``)."""
        eot = set(fmt.end_of_turn_ids(self.tokenizer)) | set(self.eos_ids)
        text = self.tokenizer.decode([t for t in comp.token_ids if t not in eot], skip_special_tokens=False)
        if isinstance(comp.stop_reason, str) and not keep_stop and comp.stop_reason in text:
            text = text[:text.index(comp.stop_reason)]
        calls = []
        if tools_on:
            for m in _CALL_RE.finditer(text):
                try:
                    obj = json.loads(m.group(1).strip())
                    name, args = obj["name"], obj.get("arguments", {})
                    if not isinstance(name, str):
                        raise TypeError
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # left in the content for the client to see
                calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})
        if calls:
            return _CALL_RE.sub("", text).strip() or None, calls  # null content beside tool calls
        return text, calls

    def _visible(self, tokens: list[int], tools_on: bool, stops: list[str]) -> str:
        """Chat content that can be streamed now: no partial character or possible stop string
        (see :func:`_stable_prefix`), nothing from the first ``<tool_call>`` (or a tail that may
        become one) on, no trailing blanks (a tool call may follow them, and the final content
        is stripped then)."""
        eot = set(fmt.end_of_turn_ids(self.tokenizer)) | set(self.eos_ids)
        text = self.tokenizer.decode([t for t in tokens if t not in eot], skip_special_tokens=False)
        text = _stable_prefix(text, stops)
        if tools_on:
            i = text.find(_CALL_OPEN)
            if i >= 0:
                text = text[:i]
            else:
                for k in range(len(_CALL_OPEN) - 1, 0, -1):
                    if text.endswith(_CALL_OPEN[:k]):
                        text = text[:-k]
                        break
            text = text.rstrip()
        return text

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("'messages' must be a non-empty list", "messages")
            tools = _check_tools(body.get("tools"))
            choice = body.get("tool_choice")
            if choice not in (None, "auto", "none"):
                raise BadRequest(f"'tool_choice' = {json.dumps(choice)[:80]} is not supported; "
                                 "use 'auto' or 'none'", "tool_choice")
            tools_on = bool(tools) and choice != "none"
            try:
                prompt = self.render_chat(messages, tools if tools_on else None)
            except BadRequest:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. a template that rejects the messages
                raise BadRequest(f"could not render the messages: {err}", "messages") from None
            n = _int(body, "n", 1, 1, 128)
            mt = body.get("max_completion_tokens")
            key = "max_completion_tokens" if mt is not None else "max_tokens"
            max_tokens = _int(body, key, None, 1)
            if max_tokens is None:
                max_tokens = self.max_request_tokens() - len(prompt)
                if max_tokens < 1:
                    self._check_room(len(prompt), 1)
            sampling = self._sampling(body)
            sampling.eos_ids = list(dict.fromkeys(sampling.eos_ids + fmt.end_of_turn_ids(self.tokenizer)))
            top_n = self._logprobs_n(body, chat=True)
            sampling.top_n = max(0, top_n)
            stream, include_usage = self._stream_opts(body)
            keep = _bool(body, "include_stop_str_in_output")
            self._check_room(len(prompt), max_tokens)
        except BadRequest as err:
            return _err(err.status, str(err), err.kind, err.param)
        self.requests_total += 1
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        jobs = [_Job(i, prompt) for i in range(n)]
        if stream:
            return await self._stream_chat(request, rid, jobs, max_tokens, sampling, top_n >= 0, tools_on,
                                           include_usage, len(prompt), keep)
        failed = await self._gather(rid, jobs, max_tokens, sampling)
        if failed is not None:
            return failed
        choices, n_out = [], 0
        for j in jobs:
            comp = j.done
            n_out += len(comp.token_ids)
            content, calls = self._reply(comp, tools_on, keep)
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                msg["tool_calls"] = calls
            choices.append({
                "index": j.index, "message": msg, "token_ids": comp.token_ids,
                "logprobs": self._chat_logprobs(comp.token_ids, comp.logprobs or [],
                                                comp.meta.get("top_logprobs") or []) if top_n >= 0 else None,
                "finish_reason": "tool_calls" if calls else comp.finish_reason,
                "stop_reason": self._stop_reason(comp, sampling),
            })
        self.tokens_total += n_out
        n_in = len(prompt)
        return web.json_response({
            "id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": self.name, "choices": choices,
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        })

    async def _stream_chat(self, request, rid, jobs, max_tokens, sampling, want_lp, tools_on,
                           include_usage, n_in, keep) -> web.StreamResponse:
        def choices_of(j, comp, toks, lps, tops, new) -> list[dict]:
            calls: list[dict] = []
            if comp is not None:
                content, calls = self._reply(comp, tools_on, keep)
                content = content or ""
            else:
                content = self._visible(toks, tools_on, [] if keep else sampling.stop_strs)
            delta_text = content[len(j.sent_text):] if content.startswith(j.sent_text) else ""
            if not delta_text and comp is None and new.start == new.stop:
                return []
            lp = self._chat_logprobs(toks[new], lps[new], tops[new]) if want_lp else None
            j.sent_text += delta_text
            j.sent_tokens = len(toks)
            out = []
            if delta_text or (comp is None and lp is not None):
                out.append({"index": j.index, "delta": {"content": delta_text}, "logprobs": lp,
                            "finish_reason": None})
                lp = None
            if comp is not None:
                if calls:
                    out.append({"index": j.index, "delta": {"tool_calls": [
                        {"index": k, **c} for k, c in enumerate(calls)]}, "logprobs": lp, "finish_reason": None})
                    lp = None
                out.append({"index": j.index, "delta": {}, "logprobs": lp,
                            "finish_reason": "tool_calls" if calls else comp.finish_reason,
                            "stop_reason": self._stop_reason(comp, sampling)})
            return out

        opening = [{"index": j.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None} for j in jobs]
        return await self._stream(request, rid, "chat.completion.chunk", jobs, max_tokens, sampling,
                                  include_usage, n_in, choices_of, opening=opening,
                                  one_per_chunk=True)  # one choice per chunk, as OpenAI

def _stable_prefix(text: str, stops: list[str]) -> str:
    """The part of a growing text that the final one will start with: cut at the first stop
    string already in it (the engine has stopped there, the final text is cut there), else
    without its last ``len(longest stop) - 1`` characters (a stop may be starting), and
    without a trailing partial UTF-8 character (U+FFFD)."""
    cut = [i for i in (text.find(s) for s in stops) if i >= 0]
    if cut:
        return text[:min(cut)]
    text = text.rstrip("\ufffd")
    hold = max((len(s) for s in stops), default=1) - 1
    return text[:len(text) - hold] if hold else text


def _check_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be a list of {'type': 'function', 'function': {...}}", "tools")
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
            raise BadRequest(f"'{where}' must be {{'type': 'function', 'function': {{...}}}}", where)
        f = t["function"]
        if not isinstance(f.get("name"), str) or not _NAME_RE.match(f["name"]):
            raise BadRequest(f"'{where}.function.name' must be 1-64 letters, digits, '_', '-' or '.', "
                             f"got {f.get('name')!r}", f"{where}.function.name")
        if f.get("description") is not None and not isinstance(f["description"], str):
            raise BadRequest(f"'{where}.function.description' must be a string", f"{where}.function.description")
        if f.get("parameters") is not None and not isinstance(f["parameters"], dict):
            raise BadRequest(f"'{where}.function.parameters' must be a JSON Schema object, got "
                             f"{json.dumps(f['parameters'])[:80]}", f"{where}.function.parameters")
    return tools


def _chat_message(m: Any, i: int) -> dict:
    """An OpenAI message, checked, with assistant ``tool_calls`` folded into hermes text."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise BadRequest(f"'{where}' must be an object with 'role' and 'content'", where)
    role = m.get("role")
    if role not in ROLES:
        raise BadRequest(f"'{where}.role' must be one of {', '.join(ROLES)}; got {role!r}", f"{where}.role")
    content = m.get("content")
    if content is None:
        if role != "assistant":
            raise BadRequest(f"'{where}.content' is missing; only an assistant message may omit it",
                             f"{where}.content")
        content = ""
    elif isinstance(content, list):  # content parts: text only
        texts = []
        for k, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise BadRequest(f"'{where}.content[{k}]' must be {{'type': 'text', 'text': ...}} "
                                 "(tirl serve takes text only)", f"{where}.content")
            texts.append(p["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise BadRequest(f"'{where}.content' must be a string or a list of text parts", f"{where}.content")
    out = {"role": "system" if role == "developer" else role, "content": content}
    calls = m.get("tool_calls")
    if calls is not None and (role != "assistant" or not isinstance(calls, list)):
        raise BadRequest(f"'{where}.tool_calls' must be a list, on an assistant message", f"{where}.tool_calls")
    for k, c in enumerate(calls or []):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise BadRequest(f"'{where}.tool_calls[{k}]' needs 'function': {{'name', 'arguments'}}",
                             f"{where}.tool_calls")
        args = f.get("arguments", "{}")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass
        out["content"] += ("\n" if out["content"] else "") + "<tool_call>\n" + json.dumps(
            {"name": f["name"], "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
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


async def serve(engine, tokenizer, name: str | list[str], host: str = "127.0.0.1", port: int = 8000,
                ready: asyncio.Event | None = None, header_timeout_s: float = 30.0,
                body_timeout_s: float = 30.0, model_path: str = "") -> None:
    """Run the server until cancelled. ``name``: the served model name, or the list of names
    clients may send (see :func:`served_model_names`). A connection that has not sent a
    request's headers within ``header_timeout_s`` (or idles that long between requests) is
    closed; a body slower than ``body_timeout_s`` gets 408. A client that disconnects cancels
    its request's generation. The weight-update endpoints (:mod:`tirl.engines.weights_api`,
    SGLang's names) let a trainer push new weights; ``model_path`` is what was loaded."""
    from tirl.engines.weights_api import add_weight_routes

    app = ModelServer(engine, tokenizer, name, body_timeout_s=body_timeout_s).app()
    add_weight_routes(app, engine, tokenizer, model_path=model_path)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, keepalive_timeout=header_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise ServeArgError(f"cannot listen on {host}:{port}: {err.strerror}; pick another --port") from None
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
