"""`SandboxClient`: the sandbox's four methods over HTTP, or in-process with `SandboxClient.local()`.

Over HTTP it keeps one connection pool, and *micro-batches*: calls made concurrently (within
``batch_window_s`` of each other, up to ``max_batch``) travel together in one
``POST /v1/execute/batch``. It retries with exponential backoff on connection failures and on
``infra_error`` results only — never on the user's own errors, timeouts or limits. After the
last retry it returns the ``infra_error`` (it never raises for a failed call, so a tool call
always gets a typed result).

A call's ``queue_timeout_s`` (the caller's budget for waiting for a slot) travels with it;
retries spend what is left of it and stop when it is spent, and the HTTP timeout of a
batch grows by its largest ``queue_timeout_s``.

What it does not: no authentication, no client-side timeouts shorter than the server's
(the HTTP timeout is the call's own ``timeout_s`` plus queueing slack).
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, replace

from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.types import ExecRequest, ExecResult


@dataclass
class _Item:
    req: ExecRequest
    fut: asyncio.Future
    attempt: int = 0
    deadline: float | None = None  # loop time by which it must have left the queue


class SandboxClient:
    def __init__(self, url: str, *, max_batch: int = 64, batch_window_s: float = 0.002,
                 retries: int = 3, backoff_s: float = 0.2, request_timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.max_batch, self.batch_window_s = max_batch, batch_window_s
        self.retries, self.backoff_s = retries, backoff_s
        self.request_timeout_s = request_timeout_s
        self._local = None
        self._http = None
        self._queue: list[_Item] = []
        self._flusher: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()

    @classmethod
    def local(cls, cfg: SandboxConfig | None = None, **overrides) -> SandboxClient:
        """The in-process mode: the same interface backed by a local :class:`Sandbox`."""
        from tirl.sandbox.pool import Sandbox

        c = cls("local:")
        c._local = Sandbox(cfg, **overrides)
        return c

    async def start(self) -> None:
        if self._local is not None:
            await self._local.start()
        elif self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s))

    async def close(self) -> None:
        if self._local is not None:
            await self._local.close()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._queue and self._http is not None:
            self._flush()  # answer what was queued before closing
        for t in list(self._inflight):
            await asyncio.gather(t, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> SandboxClient:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- the tool-executor interface ------------------------------------------------------------
    async def run(self, code: str, stdin: str = "", timeout_s: float | None = None,
                  session_id: str | None = None, *, queue_timeout_s: float | None = None) -> ExecResult:
        """One call; ``queue_timeout_s``: the most seconds it may wait for a slot, across
        retries (None: the server's default)."""
        if self._local is not None:
            return await self._local.run(code, stdin, timeout_s, session_id,
                                         queue_timeout_s=queue_timeout_s)
        await self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._enqueue(_Item(ExecRequest(code, stdin, timeout_s, session_id, queue_timeout_s), fut,
                            deadline=None if queue_timeout_s is None else loop.time() + queue_timeout_s))
        return await fut

    async def run_batch(self, requests: list[ExecRequest]) -> list[ExecResult]:
        if self._local is not None:
            return await self._local.run_batch(requests)
        return list(await asyncio.gather(*(
            self.run(r.code, r.stdin, r.timeout_s, r.session_id, queue_timeout_s=r.queue_timeout_s)
            for r in requests)))

    async def close_session(self, session_id: str) -> bool:
        if self._local is not None:
            return await self._local.close_session(session_id)
        await self.start()
        from urllib.parse import quote

        for attempt in range(self.retries + 1):
            try:
                async with self._http.delete(f"{self.url}/v1/sessions/{quote(session_id, safe='')}") as r:
                    return r.status == 204
            except (OSError, asyncio.TimeoutError, _client_errors()):
                if attempt == self.retries:
                    return False
                await asyncio.sleep(self._delay(attempt))
        return False

    async def health(self) -> dict:
        if self._local is not None:
            return await self._local.health()
        await self.start()
        async with self._http.get(f"{self.url}/healthz") as r:
            return await r.json()

    # --- micro-batching -----------------------------------------------------------------------
    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if len(self._queue) >= self.max_batch:
            self._flush()
        elif self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.batch_window_s)
        self._flusher = None
        self._flush()

    def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            t = asyncio.ensure_future(self._send(batch))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * (2**attempt) * (0.5 + random.random())

    async def _send(self, batch: list[_Item]) -> None:
        while batch:
            body = {"requests": [{k: v for k, v in vars(i.req).items() if v is not None}
                                 for i in batch]}
            try:
                results = await self._post(body, len(batch))
            except _BadRequest as err:
                # one bad request must not sink the batch: answer it, resend the others
                bad = [err.index] if err.index is not None and err.index < len(batch) else range(len(batch))
                for i in bad:
                    item = batch[i]
                    if not item.fut.done():
                        item.fut.set_result(ExecResult(
                            "error", stderr=f"the sandbox refused this request: {err}\n",
                            session_id=item.req.session_id, reason="bad_request"))
                batch = [it for i, it in enumerate(batch) if i not in set(bad)]
                continue
            except Exception as err:  # connection failure: retry the whole batch
                for item in batch:
                    self._retry_or_fail(item, ExecResult(
                        "infra_error", session_id=item.req.session_id,
                        reason=f"connection: {type(err).__name__}: {err}"))
                return
            for item, res in zip(batch, results):
                if res.status == "infra_error":
                    self._retry_or_fail(item, res)
                elif not item.fut.done():
                    item.fut.set_result(res)
            return

    async def _post(self, body: dict, n: int) -> list[ExecResult]:
        waits = [q.get("queue_timeout_s") or 0.0 for q in body["requests"]]
        timeout = None
        if max(waits, default=0.0) > 0:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=self.request_timeout_s + max(waits))
        async with self._http.post(f"{self.url}/v1/execute/batch", json=body, timeout=timeout) as r:
            data = await r.json(content_type=None)
            if r.status >= 400:
                # a request the server refuses is the caller's bug, not a transient failure
                raise _BadRequest(data.get("error", str(data)), data.get("field"))
        results = [ExecResult.from_dict(d) for d in data["results"]]
        if len(results) != n:
            raise RuntimeError(f"server answered {len(results)} results for {n} requests")
        return results

    def _retry_or_fail(self, item: _Item, res: ExecResult) -> None:
        if item.fut.done():
            return
        loop = asyncio.get_running_loop()
        delay = self._delay(item.attempt)
        left = None if item.deadline is None else item.deadline - loop.time() - delay
        if item.attempt >= self.retries or (left is not None and left <= 0):
            res.extra = {**res.extra, "attempts": item.attempt + 1}
            item.fut.set_result(res)
            return
        item.attempt += 1
        if left is not None:  # the retry may wait only for what is left of the caller's budget
            item.req = replace(item.req, queue_timeout_s=left)
        loop.call_later(delay, self._enqueue, item)


class _BadRequest(Exception):
    def __init__(self, message: str, field: str | None):
        super().__init__(f"{field}: {message}" if field else message)
        m = re.match(r"requests\[(\d+)\]", field or "")
        self.index = int(m.group(1)) if m else None


def _client_errors():
    import aiohttp

    return aiohttp.ClientError
