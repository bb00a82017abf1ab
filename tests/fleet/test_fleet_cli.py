"""End to end with the real sandbox: `tirl sandbox worker` + `tirl sandbox serve --redis`
as processes, a `SandboxClient` over HTTP; user code cannot reach Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.fleet.conftest import _free_port
from tirl.sandbox.client import SandboxClient
from tirl.sandbox.types import ExecRequest

pytestmark = pytest.mark.slow


def _tirl(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tirl.cli", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _wait_healthy(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"{url}/healthz") as r:
                    last = await r.json()
                    if r.status == 200:
                        return last
            except aiohttp.ClientError as err:
                last = err
            await asyncio.sleep(0.2)
    raise AssertionError(f"fleet gateway at {url} not healthy within {timeout}s: {last}")


async def test_cli_gateway_and_worker_run_real_code(redis_server):
    port = _free_port()
    worker = _tirl("sandbox", "worker", "--redis", redis_server.url, "--slots", "2")
    gateway = _tirl("sandbox", "serve", "--redis", redis_server.url, "--port", str(port))
    procs = [worker, gateway]
    try:
        url = f"http://127.0.0.1:{port}"
        h = await _wait_healthy(url)
        assert h["workers"] == 1 and h["slots"] == 2
        async with SandboxClient(url) as c:
            r = await c.run("1 + 1")
            assert (r.status, r.stdout) == ("ok", "2\n")
            r = await c.run("import sympy\nsympy.factor(sympy.Symbol('x')**2 - 1)")
            assert r.status == "ok" and "(x - 1)*(x + 1)" in r.stdout
            r = await c.run("raise ValueError('bad')")
            assert r.status == "error" and "ValueError: bad" in r.stderr
            # the worker's sandbox has no network: user code cannot reach the fleet's Redis
            port_r = redis_server.port
            r = await c.run("import socket\ns = socket.create_connection(('127.0.0.1', "
                            f"{port_r}), timeout=2)\ns.sendall(b'PING\\r\\n')\nprint(s.recv(9))")
            assert r.status == "error" and "PONG" not in r.stdout, r
            # sessions keep state on their worker; DELETE ends them
            assert (await c.run("x = 41", session_id="s1")).status == "ok"
            r = await c.run("x + 1", session_id="s1")
            assert (r.status, r.stdout) == ("ok", "42\n")
            assert await c.close_session("s1") is True
            assert await c.close_session("s1") is False
            res = await c.run_batch([ExecRequest(f"print({i} * {i})") for i in range(40)])
            assert [x.stdout for x in res] == [f"{i * i}\n" for i in range(40)]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/metrics") as resp:
                text = await resp.text()
        assert resp.status == 200 and "tirl_fleet_latency_seconds_count" in text
        assert 'tirl_fleet_results_total{status="ok"}' in text
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.stderr.read().decode()[-2000:]
        assert gateway.wait(60) == 0, gateway.stderr.read().decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
