"""The supervisor's handle on one zygote process: start, messages, death and restart.

`ZygoteProcess` spawns ``python -m tirl.sandbox.zygote`` with a scrubbed environment, waits
for ``ready``, sends ``spawn``/``kill`` messages and resolves each spawned call's future with
the zygote's ``exit``/``error`` message. When the zygote dies, every pending future gets
``{"op": "dead", "reason": "zygote_died"}`` (so no call hangs), ``on_dead`` is told, and a
new zygote is started with backoff. It does not time calls or read their output (the
`Sandbox` does).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable

from tirl.sandbox import protocol

READY_TIMEOUT_S = 120.0


class ZygoteDied(Exception):
    pass


class ZygoteProcess:
    def __init__(self, name: str, preload: list[str], uid_base: int,
                 on_dead: Callable[[ZygoteProcess], None] | None = None):
        self.name, self.preload = name, list(preload)
        self.uid_base = uid_base
        self.on_dead = on_dead
        self.info: dict = {}
        self.restarts = 0
        self.ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._generation = 0
        self._closing = False
        self._restart_task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.info.get("pid")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        parent, child = protocol.socketpair()
        cfg = {"preload": self.preload, "uid_base": self.uid_base}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isabs(p))}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tirl.sandbox.zygote", str(child.fileno()), json.dumps(cfg),
            pass_fds=(child.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=None, start_new_session=True)
        child.close()
        parent.setblocking(False)
        self._sock = parent
        self._generation += 1
        gen = self._generation
        self.ready.clear()
        self._loop.add_reader(parent.fileno(), self._on_readable, gen)
        try:
            await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            self._dead(gen)
            raise RuntimeError(f"sandbox zygote {self.name!r} did not start within "
                               f"{READY_TIMEOUT_S:.0f}s") from None

    async def close(self) -> None:
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        self._detach()
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._fail_pending("sandbox_closed")

    def _detach(self) -> None:
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())
            except (ValueError, OSError):
                pass
            self._sock.close()
            self._sock = None

    # --- messages ---------------------------------------------------------------------------
    def spawn(self, cid: int, msg: dict, fds: list[int]) -> asyncio.Future:
        """Send a spawn request; the future resolves with the exit/error/dead message."""
        if self._sock is None:
            raise ZygoteDied()
        fut = self._loop.create_future()
        self._pending[cid] = fut
        try:
            protocol.send_nonblocking(self._sock, {"op": "spawn", "id": cid, **msg}, fds)
        except Exception:
            self._pending.pop(cid, None)
            raise
        return fut

    def kill(self, cid: int) -> None:
        if self._sock is None:
            return
        try:
            protocol.send_nonblocking(self._sock, {"op": "kill", "id": cid})
        except OSError:
            pass

    def _on_readable(self, gen: int) -> None:
        sock = self._sock
        if sock is None or gen != self._generation:
            return
        while True:
            try:
                msg, fds, _f, _a = socket.recv_fds(sock, protocol.MAX_INLINE + 16, protocol.MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            if not msg:
                self._dead(gen)
                return
            obj, _ = protocol.decode(msg, fds)
            op = obj.get("op")
            if op == "ready":
                self.info = obj.get("info", {})
                self.ready.set()
            elif op in ("exit", "error"):
                fut = self._pending.pop(int(obj["id"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(obj)

    # --- death and restart ------------------------------------------------------------------
    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result({"op": "dead", "reason": reason})

    def _dead(self, gen: int) -> None:
        if gen != self._generation or self._sock is None:
            return
        self._detach()
        self.ready.clear()
        self._fail_pending("zygote_died")
        if self.on_dead is not None:
            self.on_dead(self)
        if not self._closing:
            self.restarts += 1
            self._restart_task = asyncio.create_task(self._restart())

    async def _restart(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.kill()
        if proc is not None:
            await proc.wait()
        delay = 0.1
        while not self._closing:
            try:
                await self.start()
                return
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
