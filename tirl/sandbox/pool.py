"""`Sandbox`: the in-process supervisor (slots, queue, clocks, output capture, sessions).

What it does: starts the zygote (:mod:`tirl.sandbox.zygote`) and keeps it alive (a dead
zygote fails the calls in flight with ``infra_error``/``zygote_died`` and is restarted);
admits requests into a fixed number of slots behind a bounded queue (``queue_full`` when the
queue is full; ``queue_timeout`` when a request's own ``queue_timeout_s`` passes before a slot
frees — without one a request waits as long as it takes; queue time is reported apart from
execution time, whose clock starts when a slot starts); a cancelled call (its HTTP client went
away) leaves the queue if it has not started, or has its child killed if it has (counted in
``tirl_sandbox_cancelled_total``); reads each call's stdout/stderr as it streams, up to a hard cap; asks the
zygote to kill a call's whole process tree at the wall-clock limit or at the output cap;
keeps stateful sessions (one long-lived forked worker per ``session_id``, idle TTL, a cap on
live sessions); classifies every outcome into exactly one typed ``ExecResult``.

What it does not: HTTP (:mod:`tirl.sandbox.http`), the Redis fleet (:mod:`tirl.sandbox.fleet`),
or anything inside the child (the zygote does that). Everything here runs on one asyncio
event loop and never blocks it.
"""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from tirl.sandbox import protocol
from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.metrics import SandboxMetrics
from tirl.sandbox.runner import MEMORY_EXIT, SETUP_FAILED_EXIT
from tirl.sandbox.types import ExecRequest, ExecResult
from tirl.sandbox.zygote_process import READY_TIMEOUT_S, ZygoteDied, ZygoteProcess

CHILD_SETUP_FAILED = SETUP_FAILED_EXIT  # the zygote's child could not isolate itself
KILL_GRACE_S = 10.0  # after asking for a kill, how long until the zygote counts as stuck


def default_slots() -> int:
    """4 per core: a call spends part of its life in fork/exit and IPC, not on a CPU, and
    session cells are mostly round trips (measured: 4 → 8 slots on 2 cores took 64 live
    sessions from ~2,600 to ~4,000 cells/s, with trivial one-shot throughput unchanged)."""
    return max(2, 4 * (os.cpu_count() or 1))


class _Capture:
    """Non-blocking reader of one call's stdout and stderr pipes, with a shared byte cap."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out_r: int, err_r: int, cap: int,
                 on_overflow):
        self.loop, self.fds, self.cap = loop, {out_r: bytearray(), err_r: bytearray()}, cap
        self.out_r, self.err_r = out_r, err_r
        self.total = 0
        self.truncated = False
        self.on_overflow = on_overflow
        self.open = {out_r, err_r}
        self.eof = asyncio.Event()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        self._read(fd)

    def _read(self, fd: int) -> None:
        while fd in self.open:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._close_fd(fd)
                return
            room = self.cap - self.total
            if len(chunk) > room:
                if room > 0:
                    self.fds[fd] += chunk[:room]
                    self.total += room
                if not self.truncated:
                    self.truncated = True
                    self.on_overflow()
            else:
                self.fds[fd] += chunk
                self.total += len(chunk)

    def _close_fd(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            self.loop.remove_reader(fd)
            os.close(fd)
        if not self.open:
            self.eof.set()

    def drain(self) -> None:
        for fd in list(self.open):
            self._read(fd)

    def take(self) -> tuple[str, str]:
        """Decode and reset what was read so far (a session reuses the pipes per cell)."""
        out, err = bytes(self.fds[self.out_r]), bytes(self.fds[self.err_r])
        self.fds[self.out_r].clear()
        self.fds[self.err_r].clear()
        self.total = 0
        self.truncated = False
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self) -> None:
        for fd in list(self.open):
            self._close_fd(fd)


@dataclass
class _Session:
    sid: str
    cid: int
    ctl: socket.socket
    capture: _Capture
    exit_fut: asyncio.Future
    zygote: ZygoteProcess
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    overflowed: bool = False


# Standard-library modules the light zygote preloads (cheap to fork: ~10 MB heap).
LIGHT_PRELOAD = ["math", "cmath", "fractions", "decimal", "itertools", "functools",
                 "collections", "statistics", "random", "re", "json", "string", "heapq",
                 "bisect", "operator", "typing", "dataclasses", "datetime", "time",
                 "encodings.idna"]


def imported_modules(code: str) -> set[str] | None:
    """Top-level names of the modules ``code`` imports, or None if it does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def needs_full_zygote(code: str) -> bool:
    """True when ``code`` imports anything outside the standard library (numpy, sympy, ...):
    then it runs in the zygote with the full preload; plain-Python code runs in the light one,
    whose forks are several times cheaper. Either can run any code: this only picks the
    faster start."""
    mods = imported_modules(code)
    return bool(mods) and not mods <= _STDLIB


_STDLIB = frozenset(sys.stdlib_module_names)


class Sandbox:
    """In-process pool of isolated Python executions (see module docstring).

    ``Sandbox(cfg=None, **overrides)``; ``async with Sandbox() as sb: await sb.run("1+1")``.
    """

    def __init__(self, cfg: SandboxConfig | None = None, **overrides):
        base = cfg or SandboxConfig()
        if overrides:
            base = SandboxConfig.model_validate({**base.model_dump(), **overrides})
        self.cfg = base
        self.slots = self.cfg.slots or default_slots()
        self.metrics = SandboxMetrics()
        self._sem: asyncio.Semaphore | None = None
        self._waiting = 0
        self._busy = 0
        self._next_id = 0
        self._sessions: dict[str, _Session] = {}
        self._lost_sessions: OrderedDict[str, None] = OrderedDict()
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._full: ZygoteProcess | None = None
        self._light: ZygoteProcess | None = None
        self._closing = False
        self._started = False
        self._sweeper: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._sem = asyncio.Semaphore(self.slots)
        self._started = True
        self._full = ZygoteProcess("full", self.cfg.preload, self.cfg.uid_base,
                                   on_dead=self._on_zygote_dead)
        starts = [self._full.start()]
        light_preload = [m for m in self.cfg.preload if m.split(".")[0] in _STDLIB]
        if self.cfg.light_zygote and len(light_preload) < len(self.cfg.preload):
            self._light = ZygoteProcess("light", sorted(set(light_preload) | set(LIGHT_PRELOAD)),
                                        self.cfg.uid_base, on_dead=self._on_zygote_dead)
            starts.append(self._light.start())
        try:
            await asyncio.gather(*starts)
        except BaseException:
            await self._close_zygotes()
            self._started = False
            raise
        self._sweeper = asyncio.create_task(self._sweep_sessions())

    async def close(self) -> None:
        if not self._started or self._closing:
            return
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for sess in list(self._sessions.values()):
            self._drop_session(sess, lost=False)
        await self._close_zygotes()

    async def _close_zygotes(self) -> None:
        for z in (self._full, self._light):
            if z is not None:
                await z.close()

    def _zygotes(self) -> list[ZygoteProcess]:
        return [z for z in (self._full, self._light) if z is not None]

    @property
    def isolation(self) -> dict:
        """What the (full) zygote reported at start: network/mounts/seccomp/uid_drop, errors,
        its ``pid``, and ``pids`` of every zygote by name."""
        info = dict(self._full.info) if self._full else {}
        info["pids"] = {z.name: z.pid for z in self._zygotes()}
        info["uid_ranges"] = {z.name: z.info.get("uid_range") for z in self._zygotes()}
        return info

    def _on_zygote_dead(self, z: ZygoteProcess) -> None:
        self.metrics.zygote_restarts += 1
        for sess in list(self._sessions.values()):
            if sess.zygote is z:
                self._drop_session(sess, lost=True)

    # --- public API -----------------------------------------------------------------------
    async def run(self, code: str, stdin: str = "", timeout_s: float | None = None,
                  session_id: str | None = None, *, queue_timeout_s: float | None = None) -> ExecResult:
        """Run one call. ``queue_timeout_s``: the most seconds it may wait for a slot
        (``infra_error``/``queue_timeout`` after that); None waits as long as it takes."""
        return await self._admit(ExecRequest(code, stdin, timeout_s, session_id, queue_timeout_s))

    async def run_batch(self, requests: list[ExecRequest]) -> list[ExecResult]:
        return list(await asyncio.gather(*(self._admit(r) for r in requests)))

    async def close_session(self, session_id: str) -> bool:
        sess = self._sessions.get(session_id)
        if sess is None:
            return False
        self._drop_session(sess, lost=False)
        return True

    def stats(self) -> dict:
        return {"slots": self.slots, "busy": self._busy, "queued": self._waiting,
                "sessions": len(self._sessions), "zygote_ready": self._all_ready(),
                "zygote_restarts": self.metrics.zygote_restarts, "isolation": self.isolation}

    def _all_ready(self) -> bool:
        zs = self._zygotes()
        return bool(zs) and all(z.ready.is_set() for z in zs)

    async def health(self) -> dict:
        info = self.isolation
        warnings = []
        if info and not info.get("network"):
            warnings.append("NO NETWORK ISOLATION: user code can reach the network "
                            f"({info.get('network_error', 'unshare(CLONE_NEWNET) failed')})")
        if info and not info.get("uid_drop"):
            warnings.append("not running as root: user code runs with the server's uid")
        if info and not info.get("seccomp"):
            warnings.append("no seccomp filter on this machine")
        if info and not info.get("mounts"):
            warnings.append("no private /tmp: user code can write to world-writable dirs")
        ok = self._all_ready()
        return {"status": "ok" if ok else "starting", **self.stats(), "warnings": warnings}

    def metrics_text(self) -> str:
        return self.metrics.render({"slots": self.slots, "busy_slots": self._busy,
                                    "queue_depth": self._waiting, "sessions": len(self._sessions)})

    # --- admission ------------------------------------------------------------------------
    async def _admit(self, req: ExecRequest) -> ExecResult:
        t_arrive = time.monotonic()
        if not self._started or self._closing:
            return self._record(ExecResult("infra_error", reason="sandbox_closed",
                                           session_id=req.session_id))
        if self._waiting >= self.cfg.queue_size:
            return self._record(ExecResult("infra_error", reason="queue_full",
                                           session_id=req.session_id))
        if req.timeout_s is not None and not req.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds (or None for the default "
                             f"{self.cfg.timeout_s:g}), got {req.timeout_s!r}")
        if req.queue_timeout_s is not None and not req.queue_timeout_s > 0:
            raise ValueError(f"queue_timeout_s must be > 0 seconds (or None to wait for a slot "
                             f"as long as it takes), got {req.queue_timeout_s!r}")
        timeout = min(float(req.timeout_s or self.cfg.timeout_s), self.cfg.max_timeout_s)
        self._waiting += 1
        try:
            if req.queue_timeout_s is None:
                await self._sem.acquire()
            else:
                async with asyncio.timeout(req.queue_timeout_s):
                    await self._sem.acquire()
        except TimeoutError:
            waited = time.monotonic() - t_arrive
            res = ExecResult("infra_error", session_id=req.session_id, reason="queue_timeout",
                             stderr=f"sandbox: waited {waited:.1f}s for a slot, over the "
                             f"request's {req.queue_timeout_s:g}s queue_timeout_s\n")
            res.queue_ms = waited * 1000
            return self._record(res)
        except asyncio.CancelledError:
            self.metrics.cancelled["queued"] += 1
            raise
        finally:
            self._waiting -= 1
        queue_ms = (time.monotonic() - t_arrive) * 1000
        self._busy += 1
        try:
            if self._closing:
                res = ExecResult("infra_error", reason="sandbox_closed")
            elif req.session_id is not None:
                res = await self._run_session_cell(req, timeout)
            else:
                zyg = self._full
                if self._light is not None and not needs_full_zygote(req.code):
                    zyg = self._light
                if not await self._wait_ready(zyg):
                    res = ExecResult("infra_error", reason="zygote_unavailable")
                else:
                    res = await self._run_once(zyg, req, timeout)
        except asyncio.CancelledError:  # the child was killed on the way out (see _run_once)
            self.metrics.cancelled["running"] += 1
            raise
        except ZygoteDied:
            res = ExecResult("infra_error", reason="zygote_died", session_id=req.session_id)
        except Exception as err:  # never drop a request: report the service's failure
            res = ExecResult("infra_error", reason=f"internal: {type(err).__name__}: {err}",
                             session_id=req.session_id)
        finally:
            self._busy -= 1
            self._sem.release()
        res.queue_ms = queue_ms
        return self._record(res)

    @staticmethod
    async def _wait_ready(z: ZygoteProcess) -> bool:
        if z.ready.is_set():
            return True
        try:
            await asyncio.wait_for(z.ready.wait(), READY_TIMEOUT_S)
            return True
        except TimeoutError:
            return False

    def _record(self, res: ExecResult) -> ExecResult:
        self.metrics.record(res.status, res.exec_ms, res.queue_ms, res.reason)
        return res

    def _limits(self, timeout: float, session: bool) -> dict:
        cpu = self.cfg.cpu_time_s or timeout
        mem = (self.cfg.session_memory_mb or self.cfg.memory_mb) if session else self.cfg.memory_mb
        return {"cpu_s": min(cpu, timeout), "memory_mb": mem, "nproc": self.cfg.nproc,
                "nofile": self.cfg.nofile, "fsize_mb": self.cfg.file_size_mb, "nice": 10,
                "session_cpu_s": 3600}

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # --- one-shot calls ---------------------------------------------------------------------
    async def _run_once(self, zyg: ZygoteProcess, req: ExecRequest, timeout: float) -> ExecResult:
        cid = self._new_id()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        flags = {"overflow": False}

        def overflow() -> None:
            flags["overflow"] = True
            zyg.kill(cid)

        cap = _Capture(self._loop, out_r, err_r, self.cfg.max_output_bytes, overflow)
        limits = self._limits(timeout, False)
        t0 = time.monotonic()
        try:
            fut = zyg.spawn(cid, {"mode": "run", "code": req.code, "stdin": req.stdin,
                                  "limits": limits}, [out_w, err_w])
        except Exception:
            cap.close()
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        # timers and one future instead of wait_for/shield tasks: this is the hot path
        state = {"timed_out": False}

        def on_timeout() -> None:
            state["timed_out"] = True
            zyg.kill(cid)

        def on_stuck() -> None:
            if not fut.done():
                fut.set_result({"op": "dead", "reason": "kill_timeout"})

        t_kill = self._loop.call_later(timeout, on_timeout)
        t_stuck = self._loop.call_later(timeout + KILL_GRACE_S, on_stuck)
        try:
            done = await fut
        except BaseException:  # cancelled by the caller: the call must not outlive its request
            zyg.kill(cid)
            cap.close()
            raise
        finally:
            t_kill.cancel()
            t_stuck.cancel()
        timed_out = state["timed_out"]
        exec_ms = (time.monotonic() - t0) * 1000
        if done.get("op") == "exit":
            cap.drain()  # every writer is dead by now, so this normally reaches EOF
            if not cap.eof.is_set():
                try:
                    await asyncio.wait_for(cap.eof.wait(), 2.0)
                except TimeoutError:
                    pass
                cap.drain()
        cap.close()
        out, err = cap.take()
        res = self._classify(done, timed_out, flags["overflow"], limits["cpu_s"])
        res.stdout, res.stderr, res.exec_ms = out, err, exec_ms
        res.truncated = flags["overflow"]
        return res

    @staticmethod
    def _classify(done: dict, timed_out: bool, overflow: bool, cpu_s: float) -> ExecResult:
        op = done.get("op")
        if op == "dead":
            return ExecResult("infra_error", reason=done.get("reason", "zygote_died"))
        if op == "error":
            return ExecResult("infra_error", reason=done.get("reason", "spawn_failed"))
        status = int(done.get("status", 0))
        if overflow:
            return ExecResult("output_limit", exit_code=None, reason="output_limit")
        if timed_out:
            return ExecResult("timeout", reason="wall_time")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and done.get("cpu_s", 0) >= cpu_s - 0.05):
                return ExecResult("timeout", exit_code=-sig, reason="cpu_time")
            return ExecResult("killed", exit_code=-sig, reason=f"signal {name}")
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
        if code == 0:
            return ExecResult("ok", exit_code=0)
        if code == MEMORY_EXIT:
            return ExecResult("memory", exit_code=code, reason="memory_limit")
        if code == CHILD_SETUP_FAILED:
            return ExecResult("infra_error", exit_code=code, reason="child_setup_failed")
        return ExecResult("error", exit_code=code)

    # --- sessions ---------------------------------------------------------------------------
    async def _run_session_cell(self, req: ExecRequest, timeout: float) -> ExecResult:
        sid = req.session_id
        lock = self._session_locks.get(sid)
        if lock is None:
            lock = self._session_locks[sid] = asyncio.Lock()
        self._lock_users[sid] = self._lock_users.get(sid, 0) + 1
        try:
            async with lock:
                return await self._session_cell_locked(sid, req, timeout)
        finally:
            self._lock_users[sid] -= 1
            if self._lock_users[sid] == 0:
                del self._lock_users[sid]
                del self._session_locks[sid]

    async def _session_cell_locked(self, sid: str, req: ExecRequest, timeout: float) -> ExecResult:
        limits = self._limits(timeout, True)
        sess = self._sessions.get(sid)
        reset_before = False
        t0 = time.monotonic()
        if sess is None:
            reset_before = sid in self._lost_sessions
            self._lost_sessions.pop(sid, None)
            if not await self._wait_ready(self._full):
                return ExecResult("infra_error", reason="zygote_unavailable", session_id=sid)
            if not self._make_room_for_session():
                return ExecResult("infra_error", reason="too_many_sessions", session_id=sid)
            sess = self._spawn_session(self._full, sid, req, limits)
        else:
            try:
                protocol.send_nonblocking(sess.ctl, {"code": req.code, "stdin": req.stdin,
                                                     "cpu_s": limits["cpu_s"]})
            except OSError:
                pass  # the worker is gone: _await_cell sees it and reports the reset
        sess.busy = True
        try:
            res = await self._await_cell(sess, timeout, limits["cpu_s"])
        finally:
            sess.busy = False
            sess.last_used = time.monotonic()
        res.exec_ms = (time.monotonic() - t0) * 1000
        res.session_id = sid
        res.session_reset = res.session_reset or reset_before
        return res

    def _spawn_session(self, zyg: ZygoteProcess, sid: str, req: ExecRequest, limits: dict) -> _Session:
        cid = self._new_id()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ctl_parent, ctl_child = protocol.socketpair()
        ctl_parent.setblocking(False)
        holder: dict = {}

        def overflow() -> None:
            s = holder.get("s")
            if s is not None:
                s.overflowed = True
            zyg.kill(cid)

        cap = _Capture(self._loop, out_r, err_r, self.cfg.max_output_bytes, overflow)
        try:
            fut = zyg.spawn(cid, {"mode": "session", "code": req.code, "stdin": req.stdin,
                                  "limits": limits}, [out_w, err_w, ctl_child.fileno()])
        except Exception:
            cap.close()
            ctl_parent.close()
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
            ctl_child.close()
        sess = _Session(sid, cid, ctl_parent, cap, fut, zyg)
        holder["s"] = sess
        self._sessions[sid] = sess
        return sess

    async def _await_cell(self, sess: _Session, timeout: float, cpu_s: float) -> ExecResult:
        # plain callbacks instead of tasks + asyncio.wait: this is the hot path of sessions
        loop = self._loop
        fut = loop.create_future()
        fd = sess.ctl.fileno()

        def settle(kind: str, data: bytes = b"") -> None:
            if not fut.done():
                fut.set_result((kind, data))

        def readable() -> None:
            try:
                data = sess.ctl.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            settle("msg" if data else "eof", data)

        def exited(_f: asyncio.Future) -> None:
            settle("exit")

        loop.add_reader(fd, readable)
        sess.exit_fut.add_done_callback(exited)
        timer = loop.call_later(timeout, settle, "timeout")
        try:
            kind, data = await fut
        except BaseException:  # cancelled by the caller: end the cell (and so the session)
            self._drop_session(sess, lost=True)
            raise
        finally:
            timer.cancel()
            sess.exit_fut.remove_done_callback(exited)
            try:
                loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
        if kind == "msg" and not sess.overflowed:
            obj, _ = protocol.decode(data, [])
            sess.capture.drain()
            out, err = sess.capture.take()
            kind, code = obj.get("kind"), int(obj.get("exit_code", 0))
            status = {"ok": "ok", "error": "error", "memory": "memory"}.get(kind, "error")
            return ExecResult(status, stdout=out, stderr=err, exit_code=code,
                              reason="memory_limit" if status == "memory" else None)
        # the worker is gone or must go: the session's state is lost
        timed_out = kind == "timeout"
        overflow = sess.overflowed
        if not sess.exit_fut.done():
            sess.zygote.kill(sess.cid)
            try:
                await asyncio.wait_for(asyncio.shield(sess.exit_fut), KILL_GRACE_S)
            except TimeoutError:
                pass
        exit_msg = sess.exit_fut.result() if sess.exit_fut.done() else {"op": "dead", "reason": "kill_timeout"}
        try:
            await asyncio.wait_for(sess.capture.eof.wait(), 2.0)
        except TimeoutError:
            pass
        sess.capture.drain()
        truncated = sess.capture.truncated or overflow
        out, err = sess.capture.take()
        res = self._classify(exit_msg, timed_out, overflow, cpu_s)
        res.stdout, res.stderr, res.truncated = out, err, truncated
        res.session_reset = True
        self._drop_session(sess, lost=True)
        return res

    def _make_room_for_session(self) -> bool:
        if len(self._sessions) < self.cfg.max_sessions:
            return True
        idle = [s for s in self._sessions.values() if not s.busy and s.sid not in self._lock_users]
        if not idle:
            return False
        self._drop_session(min(idle, key=lambda s: s.last_used), lost=True)
        return True

    def _drop_session(self, sess: _Session, lost: bool) -> None:
        if self._sessions.get(sess.sid) is sess:
            del self._sessions[sess.sid]
        if lost:
            self._lost_sessions[sess.sid] = None
            while len(self._lost_sessions) > 65536:
                self._lost_sessions.popitem(last=False)
        if not sess.exit_fut.done():
            sess.zygote.kill(sess.cid)
        try:
            sess.ctl.close()
        except OSError:
            pass
        sess.capture.close()

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.cfg.session_ttl_s / 2))
            now = time.monotonic()

            def sid_idle(s: _Session) -> bool:
                return s.sid not in self._lock_users

            for sess in list(self._sessions.values()):
                if not sess.busy and sid_idle(sess) and now - sess.last_used > self.cfg.session_ttl_s:
                    self._drop_session(sess, lost=True)
