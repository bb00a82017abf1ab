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

Booking the expected *final* size is still about twice what an engine's trajectories hold
at any moment (each is, on average, halfway), so engines run half-empty. The *peak*
booking (:meth:`LengthForecast.peak`) books instead the most a trajectory is expected to
hold at any one future point::

    peak = max over Δ ≥ 0 of (c + Δ) · P(L > l + Δ | L > l)

(context ``c`` now, response ``l`` so far, Δ more tokens; it may finish before and free
everything), with the variance of its size at that point. Summed over an engine's
trajectories the peaks bound the expected usage at every future moment (the maximum of a
sum is at most the sum of the maxima), and the variances add; the policy keeps a few
standard deviations free (:mod:`tirl.dispatch.policy`).

Per problem: :meth:`LengthForecast.log_evidence` says how much longer than typical (in log
length) one started rollout shows its problem to be; callers sum it per problem
(:class:`~tirl.dispatch.policy.LongestFirstOrder`) and pass ``scale`` to :meth:`peak` /
:meth:`future` to forecast from the problem's lengths (the global ones scaled). Over time:
:meth:`LengthForecast.future` gives a set of trajectories' expected usage, and its
variance, at every future point (the time-aligned bound, ``kv_bound = "curve"``).

What it does not do: learn a problem's own length distribution (only a scale of the global
one), model correlation between rollouts beyond that scale, or follow a trajectory between
turn boundaries (callers re-book at each, or estimate its growth).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

import math

import numpy as np


SCALE_STEP = 0.125  # log-scale resolution of problem scales in LengthForecast.future


class LengthForecast:
    def __init__(self, max_response_tokens: int, lengths: Iterable[int] = (), *, window: int = 8192,
                 resolution: int = 64):
        if max_response_tokens < 1:
            raise ValueError(f"max_response_tokens must be ≥ 1, got {max_response_tokens}")
        self.max_response_tokens = int(max_response_tokens)
        self.resolution = resolution
        self._window: deque[int] = deque(maxlen=window)
        self._table: list[int] | None = None
        self._survival: np.ndarray | None = None  # P(L > x) on the grid x = 0, r, 2r, ...
        self._alive: np.ndarray | None = None  # conditional survival matrix (future())
        self._sorted: np.ndarray | None = None  # the window's lengths, capped and sorted
        self._log_excess: np.ndarray | None = None  # E[log L | L > x] - E[log L] on the grid
        self._mean_log = 0.0
        self._since = 0
        for x in lengths:
            self._window.append(int(x))

    def observe(self, length: int) -> None:
        """Record the final response length of a finished rollout."""
        self._window.append(int(length))
        self._since += 1
        if len(self._window) < 256 or self._since >= len(self._window) // 20:
            self._table, self._survival, self._log_excess, self._alive, self._since = None, None, None, None, 0

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

    def log_evidence(self, response_so_far: int, finished: bool) -> float:
        """How much longer than typical (in log length) one rollout shows its problem to be.

        A finished rollout of length ``x`` says ``log x − E[log L]``; one still running at
        ``l`` says only that it will end beyond ``l``: ``E[log L | L > l] − E[log L]`` (0 at
        the start, growing as it outlives its peers; past every length seen, ``log l −
        E[log L]``). Lengths are capped at the budget. 0 with no observations.
        """
        if not self._window:
            return 0.0
        m, r = self.max_response_tokens, self.resolution
        l = max(1, min(int(response_so_far), m))
        if self._log_excess is None:
            s = np.log(np.maximum(np.sort(np.minimum(np.fromiter(self._window, dtype=np.int64), m)), 1))
            self._mean_log = float(s.mean())
            suffix = np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]])
            grid = np.arange(0, m + r, r)
            idx = np.searchsorted(s, np.log(np.maximum(grid, 1)), side="right")
            count = len(s) - idx
            with np.errstate(invalid="ignore", divide="ignore"):
                above = np.where(count > 0, suffix[idx] / np.maximum(count, 1), np.log(np.maximum(grid, 1)))
            self._log_excess = np.where(count == len(s), 0.0, above - self._mean_log)  # exact 0 before any end
        if finished:
            return float(np.log(l)) - self._mean_log
        return float(self._log_excess[l // r])

    def _alive_matrix(self, scale_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(A, A·(1 − A))`` with ``A[a, j]`` = P(still running after ``j·r`` more tokens |
        running at ``a·r``), lengths scaled by ``exp(scale_step · SCALE_STEP)``, over the grid
        up to the longest (scaled, capped) length seen: beyond it every trajectory has ended."""
        if self._alive is None:
            self._alive = {}
        if scale_step not in self._alive:
            m, r = self.max_response_tokens, self.resolution
            s = np.sort(np.minimum(np.fromiter(self._window, dtype=np.int64), m)).astype(np.float64)
            scale = math.exp(scale_step * SCALE_STEP)
            h = min(m // r + 1, int(math.ceil(min(m, s[-1] * scale) / r)) + 2)
            grid = np.arange(h) * r
            surv = (len(s) - np.searchsorted(s, grid / scale, side="right")) / len(s)
            surv[grid >= m] = 0.0  # a scaled length is still capped at the budget
            idx = np.arange(h)[:, None] + np.arange(h)[None, :]
            ahead = np.where(idx < h, surv[np.minimum(idx, h - 1)], 0.0)
            alive_now = np.where(surv > 0, surv, 1.0)[:, None]
            a = np.where(surv[:, None] > 0, ahead / alive_now, 0.0)
            a[:, 0] = 1.0  # it holds its context now
            a[surv <= 0, 1] = 1.0  # past every length seen: expect it to stop within one step (as peak())
            self._alive[scale_step] = (a, a * (1.0 - a))
        return self._alive[scale_step]

    def future(self, contexts, responses, scales=None) -> tuple[np.ndarray, np.ndarray]:
        """Expected KV tokens a set of trajectories holds, and its variance, ``j·r`` tokens from now.

        ``contexts[i]`` is trajectory ``i``'s whole context now, ``responses[i]`` the part
        the lengths measure. Every running trajectory grows one token per decode step, so
        ``j·r`` tokens from now trajectory ``i`` holds ``c_i + j·r`` if it still runs
        (probability from the lengths seen, given it has run ``l_i``) and nothing after it
        ends; the trajectories' ends are independent, so means and variances add. Index
        ``j`` runs over ``0 … max_response_tokens / r``. ``scales[i]`` (default 1) multiplies
        the lengths for trajectory ``i`` (its problem's, as :meth:`peak`), rounded up to a
        step of :data:`SCALE_STEP` in log scale (within e^±2). With no observations: every
        trajectory runs to the cap (the safe rule), variance 0.

        Cost: O(n) plus O(h²) per distinct scale, ``h`` = longest length seen / ``r``.
        """
        m, r = self.max_response_tokens, self.resolution
        c = np.asarray(contexts, dtype=np.float64)
        l = np.clip(np.asarray(responses, dtype=np.int64), 0, m)
        g = m // r + 1
        d = np.arange(g) * float(r)
        if not self._window:
            alive = (d[None, :] <= (m - l)[:, None]).astype(np.float64)
            return ((c[:, None] + d[None, :]) * alive).sum(0), np.zeros(g)
        b = l // r
        if scales is None:
            steps = np.zeros(len(b), dtype=np.int64)
        else:
            steps = np.ceil(np.log(np.asarray(scales, dtype=np.float64)) / SCALE_STEP - 1e-9).astype(np.int64)
            steps = np.clip(steps, -int(2 / SCALE_STEP), int(2 / SCALE_STEP))
        mean, var = np.zeros(g), np.zeros(g)
        for k in np.unique(steps):
            a, q = self._alive_matrix(int(k))
            h = len(a)
            sel = steps == k
            bk, ck = np.minimum(b[sel], h - 1), c[sel]
            n = np.bincount(bk, minlength=h).astype(np.float64)
            cs = np.bincount(bk, weights=ck, minlength=h)
            c2 = np.bincount(bk, weights=ck * ck, minlength=h)
            dh = d[:h]
            mean[:h] += cs @ a + dh * (n @ a)
            var[:h] += c2 @ q + 2.0 * dh * (cs @ q) + dh * dh * (n @ q)
        return mean, var

    def booking(self, prompt_tokens: int, response_so_far: int = 0) -> int:
        """KV tokens to book now: context so far + expected remaining."""
        return int(prompt_tokens) + int(response_so_far) + self.remaining(response_so_far)

    def peak(self, context: int, response_so_far: int, scale: float = 1.0) -> tuple[float, float]:
        """(mean, variance) of the KV tokens a trajectory holds where its expected size peaks.

        ``context`` is its whole context now, ``response_so_far`` the part of it the
        forecast's lengths measure. ``scale`` multiplies the lengths seen (a problem known
        to be longer or shorter than typical; still capped at the budget). The mean is never
        below ``context`` (it holds that now; variance 0 then). With no observations it is
        the safe rule: context + the rest of the budget, variance 0.
        """
        m, r = self.max_response_tokens, self.resolution
        c = float(context)
        l = max(0, min(int(response_so_far), m))
        if not self._window:
            return c + (m - l), 0.0
        if self._survival is None:
            self._sorted = np.sort(np.minimum(np.fromiter(self._window, dtype=np.int64), m))
            grid = np.arange(0, m + r, r)
            self._survival = (len(self._sorted) - np.searchsorted(self._sorted, grid, side="right")) / len(self._sorted)
        if scale == 1.0:
            survival = self._survival
        else:
            if scale <= 0:
                raise ValueError(f"scale must be > 0, got {scale}")
            s = self._sorted
            grid = np.arange(0, m + r, r)
            survival = (len(s) - np.searchsorted(s, grid / scale, side="right")) / len(s)
            survival[grid >= m] = 0.0  # a scaled length is still capped at the budget
        a = l // r
        alive = survival[a]
        if alive <= 0:  # past every length seen: expect it to stop within one step
            return c + min(r, m - l), 0.0
        p = survival[a + 1:] / alive  # P(still running at grid point j | running at l)
        size = c + (np.arange(a + 1, a + 1 + len(p)) * r - l)
        held = size * p
        if len(held) == 0 or held.max() <= c:
            return c, 0.0
        j = int(held.argmax())
        return float(held[j]), float(size[j] * size[j] * p[j] * (1.0 - p[j]))
