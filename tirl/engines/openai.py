"""OpenAIEngine: any OpenAI-compatible server as an engine, through ``/v1/completions``.

Token-exact where the server allows it: the prompt goes as a list of token ids (vLLM,
SGLang, ``tirl serve``) and the sampled tokens come back as ids — from ``choices[i].token_ids``
(``tirl serve``; vLLM with ``return_token_ids``) or from ``logprobs.tokens`` written as
``"token_id:N"`` (vLLM's ``return_tokens_as_token_ids``). A server that rejects token-id
prompts (or returns text only, e.g. llama.cpp) is used with text: the prompt is decoded with
the tokenizer and the completion re-encoded, and ``Completion.meta["token_exact"]`` is False.

Retries on connection errors, timeouts and 502/503/504 with exponential backoff; other
errors raise :class:`EngineError` with the server's message. With ``require_logprobs=True``
(training), a response without per-token logprobs raises :class:`EngineError` instead of
silently giving the trainer nothing.

What it does not do: streaming, or choosing among several servers (``tirl.dispatch``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from tirl.engines.base import Completion


class EngineError(RuntimeError):
    """The server failed or answered something unusable; the message says what and why."""


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


class OpenAIEngine:
    """``OpenAIEngine(base_url, model)``; ``base_url`` with or without the ``/v1`` suffix.

    ``tokenizer``: needed only for servers without token-id prompts/outputs (text mode).
    ``token_ids``: ``"auto"`` (try ids, fall back to text on a rejection), ``True`` or ``False``.
    """

    def __init__(self, base_url: str, model: str | None = None, *, tokenizer: Any = None,
                 token_ids: bool | str = "auto", require_logprobs: bool = False,
                 timeout_s: float = 900.0, retries: int = 5, backoff_s: float = 0.5,
                 api_key: str | None = None, max_connections: int = 512):
        self.base_url = _root(base_url)
        self.model = model
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.require_logprobs = require_logprobs
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.api_key = api_key
        self.max_connections = max_connections
        self._session = None
        self._session_loop = None
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
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
            )
            self._session_loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    aclose = close

    async def _post(self, path: str, body: dict) -> dict:
        import aiohttp

        url = self.base_url + path
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)))
            session = await self._get_session()
            try:
                async with session.post(url, json=body) as resp:
                    text = await resp.text()
                    if resp.status in (502, 503, 504):
                        last = EngineError(f"{url} answered {resp.status}: {text[:300]}")
                        continue
                    if resp.status >= 400:
                        raise _HTTPError(resp.status, text)
                    try:
                        return await resp.json(content_type=None)
                    except ValueError:
                        raise EngineError(f"{url} answered non-JSON: {text[:300]!r}") from None
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
                last = err
                continue
        raise EngineError(f"{url} failed after {self.retries + 1} attempts: {last!r}; is the server up?")

    async def _get(self, path: str) -> dict:
        session = await self._get_session()
        async with session.get(self.base_url + path) as resp:
            if resp.status >= 400:
                raise EngineError(f"{self.base_url + path} answered {resp.status}: {(await resp.text())[:300]}")
            return await resp.json(content_type=None)

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._get("/v1/models")).get("data", [])]

    async def _model_name(self) -> str | None:
        if self.model is None:
            names = await self.models()
            self.model = names[0] if names else None
        return self.model

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
        self.requests += 1
        stop = list(stop or [])
        body: dict[str, Any] = {
            "model": await self._model_name(),
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
        use_ids = self.token_ids is True or (self.token_ids == "auto")
        if use_ids:
            body["prompt"] = [int(t) for t in prompt_ids]
            try:
                data = await self._post("/v1/completions", body)
            except _HTTPError as err:
                if self.token_ids != "auto" or err.status not in (400, 422) or self.tokenizer is None:
                    raise EngineError(f"{self.base_url}/v1/completions answered {err.status}: {err.text[:300]}") from None
                self.token_ids = False  # this server wants text prompts
                return await self.generate(prompt_ids, max_new_tokens, temperature, stop,
                                           top_p=top_p, top_k=top_k, seed=seed)
        else:
            body["prompt"] = self._text_of(prompt_ids)
            try:
                data = await self._post("/v1/completions", body)
            except _HTTPError as err:
                raise EngineError(f"{self.base_url}/v1/completions answered {err.status}: {err.text[:300]}") from None
        return self._completion(data, text_prompt=not use_ids)

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
                          meta={"token_exact": exact and not text_prompt, "usage": data.get("usage")})


class _HTTPError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status
        self.text = text
