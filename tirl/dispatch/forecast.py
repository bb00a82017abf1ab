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


class UsageForecast:
    """Expected KV usage of a set of trajectories over their future progress.

    If every running trajectory advances by Δ tokens (a decode step gives each one token),
    a trajectory with context ``c`` and response ``l`` so far holds, in expectation,
    ``(c + Δ) · P(L > l + Δ | L > l)`` tokens — it may finish and free them. Summing
    these curves over an engine's trajectories gives its expected usage ahead; booking by
    the *peak* of that curve (rather than by every trajectory's expected final length)
    admits more, since short trajectories free their KV before long ones reach theirs.

    The curves live on a grid of ``points`` progress values up to ``max_tokens``.
    """

    def __init__(self, lengths: Iterable[int], max_tokens: int, *, points: int = 48, resolution: int = 64):
        self.max_tokens = int(max_tokens)
        self.resolution = resolution
        step = max(1, -(-self.max_tokens // (points - 1)))
        self.delta = np.arange(points, dtype=np.float64) * step
        s = np.sort(np.minimum(np.fromiter(lengths, dtype=np.int64), self.max_tokens))
        rows = np.arange(0, self.max_tokens + resolution, resolution)
        if len(s) == 0:  # nothing seen: every trajectory may run to the cap
            surv = (rows[:, None] + self.delta[None, :] <= self.max_tokens).astype(np.float64)
        else:
            above = len(s) - np.searchsorted(s, rows, side="right")
            ahead = len(s) - np.searchsorted(s, (rows[:, None] + self.delta[None, :]).ravel(), side="right")
            ahead = ahead.reshape(len(rows), -1)
            with np.errstate(invalid="ignore", divide="ignore"):
                surv = np.where(above[:, None] > 0, ahead / np.maximum(above[:, None], 1), 0.0)
            # past everything seen: expect it to stop within one resolution step
            beyond = above == 0
            surv[beyond] = (self.delta[None, :] <= resolution).astype(np.float64)
            surv[rows[:, None] + self.delta[None, :] > self.max_tokens] = 0.0
            surv[:, 0] = 1.0  # it holds its context now
        self.survival = surv

    def curve(self, context: int, response_so_far: int) -> np.ndarray:
        """Expected KV tokens held by one trajectory at each grid point of progress."""
        l = max(0, min(int(response_so_far), self.max_tokens))
        return (context + self.delta) * self.survival[l // self.resolution]

    def curves(self, context: int, response_so_far: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) of the KV tokens one trajectory holds at each grid point."""
        l = max(0, min(int(response_so_far), self.max_tokens))
        s = self.survival[l // self.resolution]
        size = context + self.delta
        return size * s, size * size * s * (1.0 - s)
