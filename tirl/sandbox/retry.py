"""`RetryingExecutor`: a tool executor that gives each call a budget and retries the sandbox
service's transient failures within it.

It wraps any executor (``run``/``close_session``/``close``: the in-process ``Sandbox``,
``SandboxClient``, the fleet's ``RedisBackend``). A call made at time ``t`` may take until
``t + budget_s`` to *start* (or until :attr:`RetryingExecutor.deadline`, an absolute
``time.monotonic()`` value a trainer may set for a whole RL step, if that is sooner):

* each attempt passes the inner executor ``queue_timeout_s`` = the budget left, so the
  call waits in the queue as long as the caller allows — a burst that drains in 73 s is not
  cut at a fixed 60 s queue deadline;
* an ``infra_error`` whose ``reason`` is in ``retry_on`` (default ``queue_timeout`` and
  ``worker_lost``) is retried after a short backoff while budget is left and fewer than
  ``max_attempts`` attempts were made; then the last result is returned, with
  ``extra["attempts"]``. A result that lost a session's state (``session_reset``) is never
  retried: re-running one cell in a fresh session would answer with the wrong state.

Execution itself is bounded by the call's own ``timeout_s``, so a call returns at most
about ``budget_s + timeout_s`` (plus the backend's grace) after it was made.

What it does not: retry the user's own errors, timeouts or limits (never the service's
fault to fix), retry other ``infra_error`` reasons unless asked (``retry_on``), or raise
for a failed call (a tool call always gets a typed result).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from typing import Any, Callable, Iterable

from tirl.sandbox.types import ExecRequest, ExecResult

RETRY_ON = ("queue_timeout", "worker_lost")


class RetryingExecutor:
    """``RetryingExecutor(inner, budget_s=600, retry_on=("queue_timeout", "worker_lost"))``.

    ``budget_s``: seconds a call may spend waiting for a slot, over all its attempts (see
    the module docstring). ``max_attempts``: attempts per call at most. ``backoff_s``: the
    pause before the first retry, doubled per retry up to ``max_backoff_s`` and never past
    the budget. ``clock``: the monotonic clock (tests pass a fake one with ``sleep``).
    """

    def __init__(self, inner: Any, *, budget_s: float = 600.0,
                 retry_on: Iterable[str] = RETRY_ON, max_attempts: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep):
        if not (isinstance(budget_s, int | float) and math.isfinite(budget_s) and budget_s > 0):
            raise ValueError(f"budget_s must be a finite number of seconds > 0, got {budget_s!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if not (backoff_s >= 0 and max_backoff_s >= 0):
            raise ValueError(f"backoff_s and max_backoff_s must be >= 0, got {backoff_s!r}, "
                             f"{max_backoff_s!r}")
        if isinstance(retry_on, str):
            raise ValueError(f"retry_on must be a collection of reasons such as {RETRY_ON}, "
                             f"not the string {retry_on!r}")
        self.inner = inner
        self.budget_s = float(budget_s)
        self.retry_on = frozenset(retry_on)
        self.max_attempts = max_attempts
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.deadline: float | None = None  # absolute clock() time no call may wait past
        self._clock, self._sleep = clock, sleep
        self._passes_queue_timeout = _accepts(inner.run, "queue_timeout_s")
        self.retries = 0  # attempts after the first, over all calls (for metrics)
        self.gave_up = 0  # calls answered with a retryable result because budget/attempts ran out

    # ---------------------------------------------------------------- executor interface
    async def run(self, code: str, stdin: str = "", timeout_s: float | None = None,
                  session_id: str | None = None, *, queue_timeout_s: float | None = None) -> ExecResult:
        """One call, retried within its budget. ``queue_timeout_s`` (a caller's own limit)
        shortens this call's budget."""
        now = self._clock()
        end = now + (self.budget_s if queue_timeout_s is None else min(self.budget_s, queue_timeout_s))
        if self.deadline is not None:
            end = min(end, self.deadline)
        attempt = 0
        while True:
            attempt += 1
            left = max(end - self._clock(), 1e-3)  # a call past its step's deadline still gets one try
            kw = {"queue_timeout_s": left} if self._passes_queue_timeout else {}
            res = await self.inner.run(code, stdin, timeout_s, session_id, **kw)
            if not self._retryable(res):
                break
            pause = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
            if attempt >= self.max_attempts or self._clock() + pause >= end:
                self.gave_up += 1
                break
            self.retries += 1
            if pause > 0:
                await self._sleep(pause)
        if attempt > 1:
            res.extra = {**res.extra, "attempts": attempt}
        return res

    async def run_batch(self, requests: list[ExecRequest]) -> list[ExecResult]:
        return list(await asyncio.gather(*(
            self.run(r.code, r.stdin, r.timeout_s, r.session_id, queue_timeout_s=r.queue_timeout_s)
            for r in requests)))

    async def close_session(self, session_id: str) -> bool:
        return await self.inner.close_session(session_id)

    async def start(self) -> RetryingExecutor:
        """Start the inner executor (every executor's ``start`` is async and idempotent)."""
        await self.inner.start()
        return self

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> RetryingExecutor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        # everything else (health, metrics_text, isolation, cfg, ...) is the inner executor's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ---------------------------------------------------------------- helpers
    def _retryable(self, res: ExecResult) -> bool:
        return (res.status == "infra_error" and res.reason in self.retry_on
                and not res.session_reset)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
