"""OpenAIEngine: any OpenAI-compatible server as an engine, through ``/v1/completions``.

Token-exact where the server allows it: the prompt goes as a list of token ids (vLLM,
SGLang, ``tirl serve``) and the sampled tokens come back as ids — from ``choices[i].token_ids``
(``tirl serve``; vLLM with ``return_token_ids``) or from ``logprobs.tokens`` written as
``"token_id:N"`` (vLLM's ``return_tokens_as_token_ids``). A server that returns text only
(e.g. llama.cpp) has its completion re-encoded, and ``Completion.meta["token_exact"]`` is False.

Start-up (:meth:`OpenAIEngine.start`, called by the builder, or lazily by the first
``generate``): ``GET /v1/models`` within ``check_timeout_s`` (a closed port or a server that
never answers fails here, at once, with the URL and what to do), then — with
``token_ids="auto"`` — the server's kind decides, once, whether it takes token-id prompts:
a model listed as ``owned_by`` vLLM, SGLang or ``tirl serve`` does (no request spent);
any other server gets one probe request of one token. Only a server that rejects the
token-id probe *and* takes the same request as text is used with text prompts (decoded with the tokenizer); any later HTTP 400/422 is an
:class:`EngineError` naming the server's message (e.g. vLLM's "max_tokens cannot be greater
than max_model_len"), never a silent switch to text.

Waiting is bounded: one request waits at most ``timeout_s`` (connecting at most
``connect_timeout_s``) and a request that timed out is not retried; connection failures and
502/503/504 are retried ``retries`` times with exponential backoff (at most
``backoff_s · (2^retries − 1)`` s of sleeping in all). So a silent server costs one
``timeout_s`` per call and a dead one the backoff total. Failures of the server itself raise
:class:`EngineUnreachable` (a ``ConnectionError``, so the dispatcher drains the engine and
moves the trajectory); other errors :class:`EngineError` with the server's message. With
``require_logprobs=True`` (training), a response without per-token logprobs raises
:class:`EngineError` instead of silently giving the trainer nothing.

Finish reasons: ``stop`` (also ``eos``/``stop_sequence``) and ``length`` pass through; any
other (``abort``, none, an error) becomes ``abort`` — an infrastructure failure the agent loop
records as ``infra_error`` — with the server's own word in ``meta["server_finish_reason"]``.

What it does not do: streaming, or choosing among several servers (``tirl.dispatch``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Sequence

from tirl.engines.base import Completion


TOKEN_ID_SERVERS = ("vllm", "sglang", "tirl")  # /v1/models `owned_by` of servers that take token ids


class EngineError(RuntimeError):
    """The server failed or answered something unusable; the message says what and why."""


class EngineUnreachable(EngineError, ConnectionError):
    """The server cannot be reached or does not answer in time (not the request's fault)."""


def _root(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _ids_from_tokens(tokens: Sequence[Any]) -> list[int] | None:
    out = []
    for t in tokens:
        if isinstance(t, int):
            out.append(t)
        elif isinstance(t, str) and t.startswith("token_id:"):
            try:
                out.append(int(t[len("token_id:"):]))
            except ValueError:
                return None
        else:
            return None
    return out


def server_message(text: str) -> str:
    """The human part of an error body: ``error.message`` / ``message`` / ``detail``, else the text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):  # OpenAI, vLLM/SGLang, FastAPI
            val = data.get(key)
            if isinstance(val, dict) and val.get("message"):
                return str(val["message"])[:500]
            if isinstance(val, str):
                return val[:500]
    return text.strip()[:500]


class OpenAIEngine:
    """``OpenAIEngine(base_url, model)``; ``base_url`` with or without the ``/v1`` suffix.

    ``model``: the served name; None = the first one ``/v1/models`` lists.
    ``tokenizer``: needed only for servers without token-id prompts/outputs (text mode).
    ``token_ids``: ``"auto"`` (decided once at start, then True or False), ``True`` or
    ``False`` (text prompts).
    ``timeout_s``: the most one request may take (generation included);
    ``connect_timeout_s``: the most connecting may take; ``check_timeout_s``: the most the
    start-up check of ``/v1/models`` may take; ``retries``/``backoff_s``: see the module docstring.
    """

    def __init__(self, base_url: str, model: str | None = None, *, tokenizer: Any = None,
                 token_ids: bool | str = "auto", require_logprobs: bool = False,
                 timeout_s: float = 900.0, connect_timeout_s: float = 5.0,
                 check_timeout_s: float = 10.0, retries: int = 5, backoff_s: float = 0.5,
                 api_key: str | None = None, max_connections: int = 512):
        if token_ids not in (True, False, "auto"):
            raise ValueError(f"token_ids={token_ids!r}: use 'auto', True or False")
        for name, v in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s),
                        ("check_timeout_s", check_timeout_s)):
            if not v > 0:
                raise ValueError(f"{name}={v} must be > 0 seconds")
        self.base_url = _root(base_url)
        self.model = model
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.require_logprobs = require_logprobs
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.check_timeout_s = check_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.api_key = api_key
        self.max_connections = max_connections
        self._session = None
        self._session_loop = None
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._start_error: EngineError | None = None
        self.owners: dict[str, str] = {}  # model name -> its `owned_by` in /v1/models
        self.context_lens: dict[str, int] = {}  # model name -> its `max_model_len` (vLLM, tirl serve)
        self.requests = 0
        self.retried = 0

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_url!r}, {self.model!r})"

    async def _get_session(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=self.connect_timeout_s),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
            )
            self._session_loop = loop
            self._start_lock = asyncio.Lock()
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (idempotent); the engine reconnects if used again."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ start-up

    async def check(self) -> list[str]:
        """``GET /v1/models`` within ``check_timeout_s``: the served model names.

        Raises :class:`EngineUnreachable` when the port is closed or the server does not
        answer in time, :class:`EngineError` when it answers with an error. A server without
        ``/v1/models`` (404) is accepted when ``model`` is given (it answers; the list is empty).
        """
        import aiohttp

        url = self.base_url + "/v1/models"
        session = await self._get_session()
        timeout = aiohttp.ClientTimeout(total=self.check_timeout_s, sock_connect=self.connect_timeout_s)
        try:
            async with session.get(url, timeout=timeout) as resp:
                text = await resp.text()
                if resp.status == 404 and self.model is not None:
                    return []
                if resp.status >= 400:
                    raise EngineError(f"{url} answered {resp.status}: {server_message(text)}")
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
            raise self._unreachable(url, err, self.check_timeout_s, "the start-up check") from None
        try:
            data = json.loads(text)
            self.owners = {str(m["id"]): str(m.get("owned_by", "")) for m in data.get("data", [])}
            self.context_lens = {str(m["id"]): int(m["max_model_len"]) for m in data.get("data", [])
                                 if isinstance(m.get("max_model_len"), int) and m["max_model_len"] > 0}
            return list(self.owners)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EngineError(f"{url} answered something that is not a model list: {text[:300]!r}") from None

    async def start(self) -> None:
        """Check the server, learn the model name, and decide token-id vs text prompts (by
        the server's kind, else one probe). Raises :class:`EngineError` /
        :class:`EngineUnreachable` naming the server and what to do; calling it again retries."""
        self._start_error = None
        names = await self.check()
        if self.model is None:
            if not names:
                raise EngineError(f"{self.base_url}/v1/models lists no model; give the served model name")
            self.model = names[0]
        if self.token_ids == "auto":
            known = self.owners.get(self.model, "").lower() in TOKEN_ID_SERVERS
            self.token_ids = True if known else await self._probe_token_ids()
        elif self.token_ids is False and self.tokenizer is None:
            raise EngineError(self._no_tokenizer_message())
        self._started = True

    async def health(self) -> dict[str, Any]:
        """A fresh check of the server: ``ok``, the listed ``models``, the ``model`` in use,
        whether prompts go as ``token_ids``, ``latency_ms``, and ``error`` when not ok."""
        t0 = time.perf_counter()
        out: dict[str, Any] = {"url": self.base_url, "model": self.model, "token_ids": self.token_ids}
        try:
            out["models"] = await self.check()
            out["ok"] = True
        except EngineError as err:
            out.update(ok=False, error=str(err))
        out["latency_ms"] = (time.perf_counter() - t0) * 1000.0
        return out

    async def _ensure_started(self) -> None:
        if self._started:
            return
        await self._get_session()
        assert self._start_lock is not None
        async with self._start_lock:
            if self._started:
                return
            if self._start_error is not None:  # a lazy start failed: fail at once (start() retries)
                raise self._start_error
            try:
                await self.start()
            except EngineError as err:
                self._start_error = err
                raise

    async def _probe_token_ids(self) -> bool:
        """One token from a token-id prompt; on 400/422, the same as text: True = token ids."""
        tok = self.tokenizer
        ids = [int(t) for t in tok.encode("Hi", add_special_tokens=False)] if tok is not None else []
        ids = ids or [0]
        path = "/v1/completions"
        try:
            await self._post(path, self._body(ids, 1, 0.0, [], top_p=1.0, top_k=0, seed=None))
            return True
        except _HTTPError as err:
            if err.status not in (400, 422):
                raise EngineError(f"{self.base_url}{path} answered {err.status} to a one-token probe: "
                                  f"{server_message(err.text)}") from None
            ids_msg = server_message(err.text)
        try:
            await self._post(path, self._body("Hi", 1, 0.0, [], top_p=1.0, top_k=0, seed=None))
        except _HTTPError as err:
            raise EngineError(
                f"{self.base_url}{path} rejected a one-token probe both as token ids ({ids_msg}) and "
                f"as text ({err.status}: {server_message(err.text)}); check the model name "
                f"({self.model!r}) and the server's log"
            ) from None
        if self.tokenizer is None:
            raise EngineError(self._no_tokenizer_message())
        return False

    def _no_tokenizer_message(self) -> str:
        return (f"{self.base_url} does not take token-id prompts; give OpenAIEngine(tokenizer=...) "
                "so prompts can be sent as text (not token-exact)")

    # ------------------------------------------------------------------ requests

    def _unreachable(self, url: str, err: BaseException, waited_s: float, what: str) -> EngineUnreachable:
        import aiohttp

        if isinstance(err, aiohttp.ConnectionTimeoutError):
            return EngineUnreachable(
                f"cannot connect to {url} within {self.connect_timeout_s:g} s (connect_timeout_s); "
                "is the host reachable and the server running?")
        if isinstance(err, asyncio.TimeoutError) and not isinstance(err, aiohttp.ClientConnectionError):
            return EngineUnreachable(
                f"{url} did not answer {what} within {waited_s:g} s; the server accepts connections "
                "but is hung or overloaded: check its log (or raise the timeout)")
        return EngineUnreachable(
            f"cannot connect to {url} ({type(err).__name__}: {err}); is the server running? "
            "(connection refused means nothing listens on that port)")

    async def _post(self, path: str, body: dict) -> dict:
        import aiohttp

        url = self.base_url + path
        last: Exception | None = None
        t0 = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)))
            session = await self._get_session()
            try:
                async with session.post(url, json=body) as resp:
                    text = await resp.text()
                    if resp.status in (502, 503, 504):
                        last = EngineError(f"answered {resp.status}: {server_message(text)}")
                        continue
                    if resp.status >= 400:
                        raise _HTTPError(resp.status, text)
                    try:
                        return json.loads(text)
                    except ValueError:
                        raise EngineError(f"{url} answered non-JSON: {text[:300]!r}") from None
            except aiohttp.ConnectionTimeoutError as err:  # connecting timed out: retry
                last = err
                continue
            except asyncio.TimeoutError:  # the request itself: a retry would wait as long again
                raise EngineUnreachable(
                    f"{url}: no answer within {self.timeout_s:g} s (timeout_s); the server is hung or "
                    "overloaded, or the response is longer than the timeout allows") from None
            except aiohttp.ClientConnectionError as err:
                last = err
                continue
        raise EngineUnreachable(
            f"{url} failed after {self.retries + 1} attempts over {time.monotonic() - t0:.1f} s: "
            f"{last!r}; is the server up?")

    async def models(self) -> list[str]:
        return await self.check()

    def _body(self, prompt: list[int] | str, max_new_tokens: int, temperature: float,
              stop: Sequence[str | int], *, top_p: float, top_k: int, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": int(max_new_tokens),
            "temperature": float(temperature),
            "top_p": float(top_p),
            "logprobs": 1,
            "stop": [s for s in stop if isinstance(s, str)],
            "stop_token_ids": [s for s in stop if isinstance(s, int)],
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if top_k and top_k > 0:
            body["top_k"] = int(top_k)
        if seed is not None:  # vLLM and SGLang take a per-request sampling seed
            body["seed"] = int(seed)
        return body

    def _text_of(self, prompt_ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            raise EngineError(
                f"{self.base_url} does not take token-id prompts; give OpenAIEngine(tokenizer=...) "
                "so prompts can be sent as text"
            )
        return self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False)

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                       stop: Sequence[str | int] | None = None, *, top_p: float = 1.0,
                       top_k: int = 0, seed: int | None = None) -> Completion:
        await self._ensure_started()
        context = self.context_lens.get(self.model or "")
        capped = False
        if context is not None and len(prompt_ids) + max_new_tokens > context:
            # servers refuse prompt + max_tokens beyond their context (vLLM, tirl serve): ask for
            # what fits and report a context stop, as the in-process engine does
            if len(prompt_ids) >= context:
                return Completion(token_ids=[], logprobs=[], finish_reason="length",
                                  meta={"context_limit": True, "token_exact": True})
            max_new_tokens, capped = context - len(prompt_ids), True
        self.requests += 1
        text_prompt = self.token_ids is False
        prompt = self._text_of(prompt_ids) if text_prompt else [int(t) for t in prompt_ids]
        body = self._body(prompt, max_new_tokens, temperature, list(stop or []),
                          top_p=top_p, top_k=top_k, seed=seed)
        try:
            data = await self._post("/v1/completions", body)
        except _HTTPError as err:
            raise EngineError(f"{self.base_url}/v1/completions answered {err.status}: "
                              f"{server_message(err.text)}") from None
        comp = self._completion(data, text_prompt=text_prompt)
        if capped and comp.finish_reason == "length":
            comp.meta["context_limit"] = True
        return comp

    def _completion(self, data: dict, text_prompt: bool) -> Completion:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise EngineError(f"{self.base_url}: a completion without choices: {str(data)[:300]}") from None
        lp = choice.get("logprobs") or {}
        ids = choice.get("token_ids")
        exact = ids is not None
        if ids is None and lp.get("tokens") is not None:
            ids = _ids_from_tokens(lp["tokens"])
            exact = ids is not None
        if ids is None:
            if self.tokenizer is None:
                raise EngineError(
                    f"{self.base_url} returned text without token ids; give OpenAIEngine(tokenizer=...) "
                    "to re-encode it (not token-exact)"
                )
            ids = list(self.tokenizer.encode(choice.get("text", ""), add_special_tokens=False))
            exact = False
        logprobs = lp.get("token_logprobs")
        if logprobs is not None:
            logprobs = [float(x) if x is not None else 0.0 for x in logprobs]
            if len(logprobs) != len(ids):
                logprobs = logprobs[:len(ids)] if exact and len(logprobs) > len(ids) else (
                    None if not exact else logprobs + [0.0] * (len(ids) - len(logprobs)))
        if logprobs is None and self.require_logprobs:
            raise EngineError(
                f"{self.base_url} returned no per-token logprobs, which training needs; use a server "
                "that supports `logprobs` in /v1/completions (vLLM, SGLang, tirl serve)"
            )
        fr = choice.get("finish_reason")
        finish = fr if fr in ("stop", "length") else ("stop" if fr in ("eos", "stop_sequence") else "abort")
        return Completion(token_ids=[int(t) for t in ids], logprobs=logprobs, finish_reason=finish,
                          stop_reason=choice.get("stop_reason"),
                          meta={"token_exact": exact and not text_prompt, "usage": data.get("usage"),
                                "server_finish_reason": fr, **_versions(data)})


def _versions(data: dict) -> dict:
    """The weight version(s) a server stamped on a completion (tirl serve: ``weight_version``
    and, for a request that spanned an update, ``weight_version_start``; SGLang's native API:
    ``meta_info.weight_version``)."""
    out = {}
    v = data.get("weight_version", (data.get("meta_info") or {}).get("weight_version"))
    if v is not None:
        out["weight_version"] = str(v)
        out["weight_version_start"] = str(data.get("weight_version_start", v))
    return out


class _HTTPError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status
        self.text = text
