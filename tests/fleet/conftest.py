"""Fixtures for the fleet tests: a private redis-server on a free loopback port (no
persistence) and worker subprocesses that are always killed at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tirl.engines.launch import free_port as _free_port

HERE = Path(__file__).resolve().parent


class RedisServer:
    def __init__(self):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (scripts/ensure_services.sh installs it)")
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="tirl-fleet-redis-")
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server():
    srv = RedisServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


class Workers:
    """Worker subprocesses of one test; every one is killed (SIGKILL) at teardown."""

    def __init__(self, url: str):
        self.url = url
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, wid: str, slots: int = 4, vis: float = 1.5, maxdel: int = 3,
              mode: str = "fake") -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, str(HERE / "_worker_proc.py"), self.url, str(slots),
                              wid, str(vis), str(maxdel), mode],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=None)
        self.procs[wid] = p
        return p

    def kill9(self, wid: str) -> None:
        p = self.procs[wid]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop(self, wid: str) -> int:
        p = self.procs[wid]
        p.send_signal(signal.SIGTERM)
        return p.wait(30)

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)


@pytest.fixture
def workers(redis_server):
    w = Workers(redis_server.url)
    try:
        yield w
    finally:
        w.cleanup()


async def wait_workers(backend, n: int, timeout: float = 30.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await backend.health()
        if h.get("workers", 0) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{n} fleet workers did not register within {timeout}s: {h}")
