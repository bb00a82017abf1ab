"""Clients that go away or stall (raw sockets on loopback): a disconnect cancels its calls
(the running child killed, queued ones never started), slow headers and slow bodies hit
read timeouts, a mid-body disconnect logs one line and no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import aiohttp
import pytest

from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.http import serve
from tirl.sandbox.pool import Sandbox
from tirl.sandbox.types import ExecResult
from tirl.engines.launch import free_port as _free_port

SLEEP = "import time\ntime.sleep(60)\nprint('still here')"


def descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(raw[raw.rindex(")") + 2:].split()[1]), []).append(int(d))
    out, stack = set(), list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(kids.get(p, []))
    return out


async def until(cond, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting ({timeout:g}s) for: {what}")
        await asyncio.sleep(0.02)


def post(path: str, body: dict | bytes, content_length: int | None = None) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    n = len(raw) if content_length is None else content_length
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n\r\n").encode() + raw


async def raw_client(port: int, data: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


class Echo:
    """A backend that answers at once (for the read-timeout tests)."""

    cfg = SandboxConfig()

    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        return ExecResult("ok", stdout=code)

    async def run_batch(self, reqs):
        return [ExecResult("ok", stdout=r.code) for r in reqs]

    async def close_session(self, sid):
        return False

    async def health(self):
        return {"status": "ok"}

    def metrics_text(self):
        return ""


async def test_a_disconnect_kills_the_running_call_and_unqueues_the_rest(caplog):
    """The measured bug: calls of clients that had gone kept running and queued ones still
    started, so a new call waited 19.5 s behind them."""
    port = _free_port()
    async with Sandbox(slots=1, preload=["math"]) as sb:
        runner = await serve(sb, "127.0.0.1", port)
        try:
            zygotes = set(sb.isolation["pids"].values())
            with caplog.at_level(logging.WARNING, logger="tirl.sandbox.http"):
                _, w_one = await raw_client(port, post("/v1/execute", {"code": SLEEP}))
                await until(lambda: sb.stats()["busy"] == 1, "the first call to run")
                children = set().union(*(descendants(z) for z in zygotes))
                assert children, "the running call's child process is visible"
                _, w_batch = await raw_client(port, post("/v1/execute/batch", {
                    "requests": [{"code": SLEEP}, {"code": SLEEP, "session_id": "s1"}]}))
                await until(lambda: sb.stats()["queued"] == 2, "the batch to queue")

                w_batch.close()  # its two calls have not started: they leave the queue
                await until(lambda: sb.stats()["queued"] == 0, "the batch to leave the queue")
                assert sb.stats()["busy"] == 1
                w_one.close()  # the running call: its child is killed
                await until(lambda: sb.stats()["busy"] == 0, "the running call to end")
                await until(lambda: not (children & set().union(*(descendants(z) for z in zygotes))),
                            "the abandoned child to die")
            assert sb.metrics.cancelled == {"queued": 2, "running": 1}
            assert sb.metrics.results["ok"] == 0  # nothing ran to completion
            assert 'tirl_sandbox_cancelled_total{stage="queued"} 2' in sb.metrics_text()
            lines = [r for r in caplog.records if r.name == "tirl.sandbox.http"]
            assert len(lines) == 2 and not any(r.exc_info for r in caplog.records)
            assert "cancelled its 2 call(s)" in lines[0].getMessage()
            assert "cancelled its 1 call(s)" in lines[1].getMessage()
            async with aiohttp.ClientSession() as s:  # a new call finds the slot free
                async with s.post(f"http://127.0.0.1:{port}/v1/execute", json={"code": "print(1)"}) as r:
                    d = await r.json()
            assert d["status"] == "ok" and d["stdout"] == "1\n" and d["queue_ms"] < 5000
            assert "s1" not in sb._sessions  # the queued session call never started its session
        finally:
            await runner.cleanup()


async def test_slow_headers_and_idle_connections_are_closed_at_the_header_timeout():
    port = _free_port()
    runner = await serve(Echo(), "127.0.0.1", port, header_timeout_s=1.0)
    try:
        idle_r, idle_w = await raw_client(port, b"")
        slow_r, slow_w = await raw_client(port, b"POST /v1/execute HTTP/1.1\r\nHost: x\r\n")

        async def trickle():  # a header byte every 0.2 s, never finishing the headers
            for _ in range(100):
                slow_w.write(b"X")
                await slow_w.drain()
                await asyncio.sleep(0.2)

        t = asyncio.ensure_future(trickle())
        try:
            assert await asyncio.wait_for(idle_r.read(), 15) == b""  # closed by the server
            assert await asyncio.wait_for(slow_r.read(), 15) == b""
        finally:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            idle_w.close()
            slow_w.close()
        # a prompt client on a fresh connection is served as usual
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/execute", json={"code": "hi"}) as r:
                assert (await r.json())["stdout"] == "hi"
    finally:
        await runner.cleanup()


async def test_a_stalled_body_gets_408_naming_the_body_and_the_connection_closes():
    port = _free_port()
    runner = await serve(Echo(), "127.0.0.1", port, body_timeout_s=0.5)
    try:
        reader, writer = await raw_client(port, post("/v1/execute", b'{"code": "', content_length=100))
        reply = await asyncio.wait_for(reader.read(), 15)  # read to EOF: the server closes
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        d = json.loads(body)
        assert d["field"] == "body" and "0.5 s" in d["error"] and "10 of 100 bytes" in d["error"]
    finally:
        await runner.cleanup()


async def test_a_mid_body_disconnect_logs_one_line_and_no_traceback(caplog):
    port = _free_port()
    runner = await serve(Echo(), "127.0.0.1", port)
    try:
        with caplog.at_level(logging.DEBUG):
            _, writer = await raw_client(port, post("/v1/execute", b'{"code": "pri', content_length=50))
            await asyncio.sleep(0.2)
            writer.close()
            await until(lambda: any(r.name == "tirl.sandbox.http" for r in caplog.records),
                        "the disconnect to be logged")
            await asyncio.sleep(0.3)  # room for a stray traceback to show up
        ours = [r for r in caplog.records if r.name == "tirl.sandbox.http"]
        assert len(ours) == 1 and ours[0].levelno == logging.WARNING
        assert "disconnected after 13 of 50 body bytes" in ours[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("value", [0, -1, "5", True, 1e9, float("nan")])
async def test_queue_timeout_is_validated_by_name(value):
    from tirl.sandbox.http import RequestError, parse_request

    with pytest.raises(RequestError) as err:
        parse_request({"code": "1", "queue_timeout_s": value}, SandboxConfig())
    assert err.value.field == "queue_timeout_s"
    assert parse_request({"code": "1", "queue_timeout_s": 90}, SandboxConfig()).queue_timeout_s == 90.0


async def test_queue_timeout_travels_over_http_to_the_pool():
    port = _free_port()
    async with Sandbox(slots=1, preload=["math"]) as sb:
        runner = await serve(sb, "127.0.0.1", port)
        try:
            from tirl.sandbox.client import SandboxClient

            async with SandboxClient(f"http://127.0.0.1:{port}", retries=0) as c:
                busy = asyncio.ensure_future(c.run("import time; time.sleep(2)"))
                await until(lambda: sb.stats()["busy"] == 1, "the slot to be taken")
                short = await c.run("print(1)", queue_timeout_s=0.2)
                assert short.status == "infra_error" and short.reason == "queue_timeout"
                assert (await busy).status == "ok"
        finally:
            await runner.cleanup()
