"""A stand-in for the local sandbox in fleet tests: the fleet's plumbing is what is under
test here, so each call's outcome is computed from its code in a few microseconds.

Code language: ``sleep:SECONDS`` waits first; the output is ``{code}|{stdin}`` (so every
answer can be matched to its request); in a session the output is ``cell=N`` where N
counts the session's cells on *this* executor (state kept per session)."""

from __future__ import annotations

import asyncio
import time

from tirl.reward.types import Grade
from tirl.sandbox.types import ExecResult


class FakeExecutor:
    def __init__(self, slots: int = 4):
        self._sem = asyncio.Semaphore(slots)
        self.sessions: dict[str, int] = {}
        self.calls = 0

    async def start(self):
        return self

    async def close(self):
        pass

    async def run(self, code: str, stdin: str = "", timeout_s=None, session_id=None) -> ExecResult:
        async with self._sem:
            self.calls += 1
            t0 = time.perf_counter()
            if code.startswith("sleep:"):
                await asyncio.sleep(float(code.split(":", 1)[1].split(";", 1)[0]))
            if session_id is not None:
                n = self.sessions.get(session_id, 0) + 1
                self.sessions[session_id] = n
                out = f"cell={n}"
            else:
                out = f"{code}|{stdin}"
            return ExecResult(status="ok", stdout=out, exit_code=0, session_id=session_id,
                              exec_ms=(time.perf_counter() - t0) * 1000)

    async def close_session(self, session_id: str) -> bool:
        return self.sessions.pop(session_id, None) is not None


class FakeGrader:
    async def grade(self, response_text: str, gold: str) -> Grade:
        got = response_text.split("\\boxed{", 1)[-1].split("}", 1)[0] if "\\boxed{" in response_text else None
        status = "no_answer" if got is None else ("correct" if got == gold else "incorrect")
        return Grade(status=status, extracted=got, gold=gold)
