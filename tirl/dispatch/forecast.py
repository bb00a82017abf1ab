"""Forecast of a rollout's remaining response length from lengths seen before.

The ``kv`` policy's safe rule books prompt + *maximum* response for every trajectory; with
long-tailed lengths most of that is never used (a mean of ~3K tokens under an 8K cap), so
engines run small batches. A *forecast* booking instead books what a trajectory is
expected to still need, given how far it has got::

    booking = context so far + E[L − l | L > l]   (capped at prompt + max_response)

where ``l`` is its response length so far and ``L`` ranges over the final response
lengths of earlier rollouts (the previous RL step: lengths drift slowly between steps).
As a trajectory grows its booking is updated (at turn boundaries), so an engine that
fills with long ones stops taking more. Summed over tens of trajectories per engine the
forecast error averages out; what remains is covered by a margin of the capacity and, as
a last resort, the engine's own preemption.

:class:`LengthForecast` is pure data + arithmetic (numpy); it learns online with
:meth:`observe` (a bounded window of recent lengths). With no observations it forecasts
the maximum, i.e. it degrades to the safe rule.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

import numpy as np


class LengthForecast:
    def __init__(self, max_response_tokens: int, lengths: Iterable[int] = (), *, window: int = 8192,
                 resolution: int = 64):
        if max_response_tokens < 1:
            raise ValueError(f"max_response_tokens must be ≥ 1, got {max_response_tokens}")
        self.max_response_tokens = int(max_response_tokens)
        self.resolution = resolution
        self._window: deque[int] = deque(maxlen=window)
        self._table: list[int] | None = None
        self._since = 0
        for x in lengths:
            self._window.append(int(x))

    def observe(self, length: int) -> None:
        """Record the final response length of a finished rollout."""
        self._window.append(int(length))
        self._since += 1
        if len(self._window) < 256 or self._since >= len(self._window) // 20:
            self._table, self._since = None, 0

    @property
    def n_observed(self) -> int:
        return len(self._window)

    def _build(self) -> list[int]:
        m, r = self.max_response_tokens, self.resolution
        grid = np.arange(0, m + r, r)
        if not self._window:
            return (m - grid).clip(0).tolist()
        s = np.sort(np.minimum(np.fromiter(self._window, dtype=np.int64), m))
        suffix = np.concatenate([np.cumsum(s[::-1])[::-1], [0]])  # suffix[j] = sum s[j:]
        idx = np.searchsorted(s, grid, side="right")  # first length > l
        count = len(s) - idx
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_above = np.where(count > 0, suffix[idx] / np.maximum(count, 1), grid)
        # past every length seen: expect a little more, never beyond the cap
        remaining = np.where(count > 0, mean_above - grid, np.minimum(r, m - grid))
        return np.clip(np.ceil(remaining), 0, m).astype(np.int64).tolist()

    def remaining(self, response_so_far: int) -> int:
        """Expected further response tokens of a rollout that has produced ``response_so_far``."""
        if self._table is None:
            self._table = self._build()
        l = max(0, min(int(response_so_far), self.max_response_tokens))
        rem = self._table[l // self.resolution]
        return min(rem, self.max_response_tokens - l)

    def booking(self, prompt_tokens: int, response_so_far: int = 0) -> int:
        """KV tokens to book now: context so far + expected remaining."""
        return int(prompt_tokens) + int(response_so_far) + self.remaining(response_so_far)
