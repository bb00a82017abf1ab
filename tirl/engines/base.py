"""What an engine is: anything that turns prompt token ids into sampled token ids.

An engine is any object with::

    async def generate(prompt_ids, max_new_tokens, temperature, stop, **sampling) -> Completion

``stop`` is a list of stop strings and/or token ids; the engine stops *after* emitting a
stop token or the last token of a stop string, and includes it in ``token_ids``.

``seed`` (optional) seeds this request's own sampling: the same prompt, parameters and seed
give the same tokens whatever else the engine is running at the time (``LocalEngine``: a
per-request generator; vLLM / SGLang: the request's ``seed`` field; scripted engines ignore
it). ``None`` = the engine's shared random state.

Optional extras an engine may take (``tirl serve`` looks for them in ``generate``'s
signature): ``top_logprobs: int`` — the n most likely (token id, logprob) pairs of every
step in ``Completion.meta["top_logprobs"]``; ``on_token(token_id, logprob, top)`` — called in
the caller's event loop as each token is sampled, before the result resolves (streaming).
An engine may also have ``max_request_tokens() -> int``: the most ``len(prompt) +
max_new_tokens`` one request may reserve (its context, or a smaller KV budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float] | None  # one per token of token_ids, None if the engine gives none
    finish_reason: FinishReason
    stop_reason: str | int | None = None  # the stop string / token that ended it, if any
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    async def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str | int] | None = None,
        *,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> Completion: ...
