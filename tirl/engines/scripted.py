"""A scripted engine: emits known turns, for tests, benchmarks and simulations.

``ScriptedEngine(tokenizer, script)`` answers ``generate`` with text chosen by ``script``:
a list of turn texts (turn *k* of every trajectory gets ``script[k]``, the last one repeats),
or a callable ``script(prompt_text, turn_index) -> str``. The text is encoded, the
end-of-turn token appended, and ``max_new_tokens`` honoured (``finish_reason="length"``).
``latency_s`` (a number or a callable returning one) simulates generation time without
using the CPU. Every prompt it receives is recorded in ``prompts`` (for prefix checks), and its
``seed`` argument in ``seeds``.

What it is not: a model. Logprobs are a fixed ``logprob`` per token; asked for
``top_logprobs``, it lists the emitted token as the only alternative.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from tirl.engines.base import Completion

ASSISTANT_HEADER = "<|im_start|>assistant"


class ScriptedEngine:
    def __init__(self, tokenizer, script: Sequence[str] | Callable[[str, int], str], *,
                 latency_s: float | Callable[[], float] = 0.0, logprob: float = -0.5,
                 end_of_turn: str = "<|im_end|>", record: bool = True):
        self.tokenizer = tokenizer
        self.script = script
        self.latency_s = latency_s
        self.logprob = logprob
        self.eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        self.record = record
        self.prompts: list[list[int]] = []
        self.calls = 0
        self.seeds: list[int | None] = []  # the ``seed`` of every call (the script ignores it)

    async def aclose(self) -> None:
        """Nothing to release (no connections, no threads); here so every engine closes alike."""

    def _text_for(self, prompt_text: str) -> str:
        turn = max(0, prompt_text.count(ASSISTANT_HEADER) - 1)
        if callable(self.script):
            return self.script(prompt_text, turn)
        return self.script[min(turn, len(self.script) - 1)]

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                       stop: Sequence[str | int] | None = None, *, top_p: float = 1.0,
                       top_k: int = 0, seed: int | None = None, top_logprobs: int = 0) -> Completion:
        self.calls += 1
        if self.record:
            self.prompts.append(list(prompt_ids))
            self.seeds.append(seed)
        lat = self.latency_s() if callable(self.latency_s) else self.latency_s
        if lat > 0:
            await asyncio.sleep(lat)
        prompt_text = self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
        ids = list(self.tokenizer.encode(self._text_for(prompt_text), add_special_tokens=False))
        ids.append(self.eot_id)
        finish = "stop"
        if len(ids) > max_new_tokens:
            ids = ids[:max_new_tokens]
            finish = "length"
        # the script is the whole distribution: the emitted token is the only alternative
        meta = {"top_logprobs": [[(t, self.logprob)] for t in ids]} if top_logprobs else {}
        return Completion(token_ids=ids, logprobs=[self.logprob] * len(ids), finish_reason=finish,
                          stop_reason=self.eot_id if finish == "stop" else None, meta=meta)
