"""A fake tool executor with scripted latencies and outcomes (the real Sandbox has the same API)."""

from __future__ import annotations

import asyncio

from tirl.sandbox.types import ExecResult


class FakeTools:
    """``run`` evaluates ``print(<expr>)``-style code by pattern; records calls and concurrency."""

    def __init__(self, latency_s=0.0, fail_with: Exception | None = None):
        self.latency_s = latency_s
        self.fail_with = fail_with
        self.calls: list[tuple[str, str, str | None]] = []
        self.closed: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        self.calls.append((code, stdin, session_id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            lat = self.latency_s(code) if callable(self.latency_s) else self.latency_s
            await asyncio.sleep(lat)
            if self.fail_with is not None:
                raise self.fail_with
            if "raise" in code:
                return ExecResult(status="error", stderr="Traceback...\nValueError: boom", exit_code=1,
                                  exec_ms=3.0, session_id=session_id)
            if "sleep" in code:
                return ExecResult(status="timeout", exec_ms=1000.0, session_id=session_id)
            out = code.replace("print(", "").rstrip(")")
            return ExecResult(status="ok", stdout=f"{out}\n", exit_code=0, exec_ms=2.0,
                              session_id=session_id)
        finally:
            self.in_flight -= 1

    async def close_session(self, session_id):
        self.closed.append(session_id)
        return True
