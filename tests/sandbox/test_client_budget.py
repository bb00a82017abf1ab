"""SandboxClient: a call's queue_timeout_s travels in the request, and the client's own
retries of infra_error spend what is left of it instead of starting afresh."""

from __future__ import annotations


from tirl.sandbox.client import SandboxClient
from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.http import serve
from tirl.sandbox.types import ExecResult
from tirl.engines.launch import free_port as _free_port


class QueueFull:
    """Every call times out in the queue; records the queue_timeout_s each attempt brought."""

    cfg = SandboxConfig()

    def __init__(self):
        self.seen: list[float | None] = []

    async def run_batch(self, reqs):
        self.seen += [r.queue_timeout_s for r in reqs]
        return [ExecResult("infra_error", reason="queue_timeout") for _ in reqs]

    async def close_session(self, sid):
        return False

    async def health(self):
        return {"status": "ok"}

    def metrics_text(self):
        return ""


async def test_retries_spend_the_callers_queue_budget():
    backend, port = QueueFull(), _free_port()
    runner = await serve(backend, "127.0.0.1", port)
    try:
        async with SandboxClient(f"http://127.0.0.1:{port}", retries=50, backoff_s=0.05) as c:
            res = await c.run("1", queue_timeout_s=0.6)
            assert res.reason == "queue_timeout"
            seen = list(backend.seen)
            # each retry brings only what is left, and the budget ends the retries long
            # before the 50 allowed ones (backoff 0.05 s doubling: ~4 fit in 0.6 s)
            assert seen[0] == 0.6 and 2 <= len(seen) <= 6 and res.extra["attempts"] == len(seen)
            assert all(b < a for a, b in zip(seen, seen[1:])) and seen[-1] > 0
        backend.seen.clear()
        async with SandboxClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01) as c:
            res = await c.run("2")  # no budget: the server's default, the client's retry count
            assert backend.seen == [None] * 3 and res.extra["attempts"] == 3
    finally:
        await runner.cleanup()
