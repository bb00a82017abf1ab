"""The zygote: a warm process that forks one isolated child per execution (or per session).

Run as ``python -m tirl.sandbox.zygote FD CONFIG_JSON`` by the supervisor (:mod:`tirl.sandbox.pool`)
with a scrubbed environment; FD is its end of a SOCK_SEQPACKET pair. At start it enters its
own network and mount namespaces (empty root-only tmpfs over /tmp and friends), becomes a
child subreaper, imports and warms the preload modules, kills leftovers of an earlier zygote,
and says ``ready`` with what isolation it got.

Messages in: ``spawn`` (id, mode "run"|"session", code, stdin, limits; fds: stdout and
stderr write ends, plus a control socket for a session), ``kill`` (id). Messages out:
``ready``, ``exit`` (id, wait status, CPU seconds) once the child is reaped and every process
of its uid has been killed, ``error`` (id, reason) when a fork failed.

Each child, before user code: parent-death signal, own session, fds 0/1/2 = /dev/null and
the two pipes (nothing else inherited), lower priority, rlimits, an empty private working
directory, a scrubbed environment, a unique unprivileged uid/gid (so ``kill_uid`` ends its
whole process tree and RLIMIT_NPROC counts only its own processes), no-new-privs and the
seccomp filter. What it does not do: it does not time anything (the supervisor owns the
clocks and asks for ``kill``), and it never reads the children's output.
"""

from __future__ import annotations

import builtins
import collections
import fcntl
import gc
import importlib
import io
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import traceback

from tirl.sandbox import isolation, protocol
from tirl.sandbox.runner import MEMORY_EXIT, SETUP_FAILED_EXIT, run_cell

_MAX_FD = max(1 << 16, os.sysconf("SC_OPEN_MAX"))
UID_BLOCK = 8192  # uids per zygote (one per live call or session)
UID_BLOCKS = 256  # zygotes per machine
WORK_ROOT = "/tmp"  # a private tmpfs inside the zygote's mount namespace
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "PYTHONDONTWRITEBYTECODE": "1"}


class Zygote:
    def __init__(self, sock: socket.socket, cfg: dict):
        self.sock = sock
        self.cfg = cfg
        self.uid_base = int(cfg.get("uid_base", 2_000_000))
        self.uid_count = UID_BLOCK
        self.free_uids: collections.deque[int] = collections.deque()
        self._uid_lock_fd = -1
        self.children: dict[int, tuple[int, int, str]] = {}  # pid -> (id, uid, workdir)
        self.by_id: dict[int, int] = {}  # id -> pid
        self.info: dict = {}

    # --- start-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        isolation.set_pdeathsig(signal.SIGKILL)  # die with the supervisor
        if os.getppid() == 1:
            os._exit(1)
        self.claim_uid_block()  # before the private mounts: the lock lives in the host's /run
        info: dict = dict(isolation.isolate_zygote(int(self.cfg.get("tmp_size_mb", 1024)),
                                                   expose=_python_paths()))
        try:
            isolation.set_child_subreaper()
            info["subreaper"] = True
        except OSError as err:
            info["subreaper"] = False
            info["subreaper_error"] = str(err)
        info["seccomp"] = isolation.seccomp_supported()
        info["uid_drop"] = os.geteuid() == 0
        for stale in isolation.uids_running(self.uid_base, self.uid_base + self.uid_count):
            if info["uid_drop"]:
                isolation.kill_uid(stale)
        failed = {}
        for name in self.cfg.get("preload", []):
            try:
                importlib.import_module(name)
            except Exception as err:  # a missing optional module must not stop the service
                failed[name] = f"{type(err).__name__}: {err}"
        _warm()
        info["preload_failed"] = failed
        info["pid"] = os.getpid()
        info["uid_range"] = [self.uid_base, self.uid_base + self.uid_count]
        if dict(os.environ) != CHILD_ENV:  # normally already scrubbed by the supervisor
            os.environ.clear()
            os.environ.update(CHILD_ENV)
        self.info = info
        self.work_root = WORK_ROOT if info.get("mounts") else tempfile.mkdtemp(prefix="tirl-sandbox-")
        gc.collect()
        gc.freeze()  # keep the warm heap shared with children (no copy-on-write from GC)

    def claim_uid_block(self) -> None:
        """Take the first free block of UID_BLOCK uids from uid_base on, machine-wide: a
        block is owned by whoever holds ``flock`` on its lock file (released when the zygote
        dies), so two sandboxes on one machine never share a uid (kill_uid and RLIMIT_NPROC
        depend on that)."""
        lock_dir = "/run/tirl-sandbox" if os.access("/run", os.W_OK) else os.path.join(
            tempfile.gettempdir(), f"tirl-sandbox-{os.getuid()}")
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        for k in range(UID_BLOCKS):
            base = self.uid_base + k * UID_BLOCK
            fd = os.open(os.path.join(lock_dir, f"uids-{base}.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._uid_lock_fd = fd
            self.uid_base = base
            self.free_uids = collections.deque(range(base, base + UID_BLOCK))
            return
        raise RuntimeError(f"all {UID_BLOCKS} uid blocks from {self.uid_base} are taken "
                           f"(lock files in {lock_dir}): too many sandboxes on this machine")

    # --- main loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        sel.register(rfd, selectors.EVENT_READ, "sigchld")
        self._wake = (rfd, wfd)
        protocol.send(self.sock, {"op": "ready", "info": self.info})
        while True:
            for key, _ in sel.select(timeout=1.0):
                if key.data == "sock":
                    try:
                        got = protocol.recv(self.sock)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:  # the supervisor went away
                        got = None
                    if got is None:
                        self.shutdown()
                        return
                    self.handle(*got)
                else:
                    try:
                        while os.read(rfd, 4096):
                            pass
                    except BlockingIOError:
                        pass
            self.reap()

    def handle(self, msg: dict, fds: list[int]) -> None:
        op = msg.get("op")
        try:
            if op == "spawn":
                self.spawn(msg, fds)
            elif op == "kill":
                pid = self.by_id.get(int(msg["id"]))
                if pid is not None:
                    self.kill_tree(pid, self.children[pid][1])
            elif op == "ping":
                self.send({"op": "pong", "live": len(self.children)})
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def spawn(self, msg: dict, fds: list[int]) -> None:
        cid = int(msg["id"])
        if not self.free_uids:
            self.send({"op": "error", "id": cid, "reason": "no_free_uid"})
            return
        uid = self.free_uids.popleft()
        workdir = os.path.join(self.work_root, f"c{cid}")
        try:
            os.mkdir(workdir, 0o700)
            if self.info.get("uid_drop"):
                os.chown(workdir, uid, uid)
        except OSError as err:
            self.free_uids.append(uid)
            self.send({"op": "error", "id": cid, "reason": f"workdir: {err}"})
            return
        try:
            pid = os.fork()
        except OSError as err:
            self.free_uids.append(uid)
            shutil.rmtree(workdir, ignore_errors=True)
            self.send({"op": "error", "id": cid, "reason": f"fork failed: {err}"})
            return
        if pid == 0:
            code = SETUP_FAILED_EXIT
            try:
                code = _child(msg, fds, uid, workdir, self.info)
            except BaseException:
                try:
                    traceback.print_exc()
                except BaseException:
                    pass
            os._exit(code)
        self.children[pid] = (cid, uid, workdir)
        self.by_id[cid] = pid

    def kill_tree(self, pid: int, uid: int) -> None:
        """Kill a call's processes: every process of its uid (as root), or else only its
        process group (not root: descendants that left the group can survive — reported as
        uid_drop=False in /healthz)."""
        if self.info.get("uid_drop"):
            isolation.kill_uid(uid)
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def send(self, obj: dict) -> None:
        try:
            protocol.send(self.sock, obj)
        except OSError:  # the supervisor is gone: end everything, quietly
            self.shutdown()
            os._exit(0)

    def reap(self) -> None:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None:
                continue  # an orphaned descendant handed to us as subreaper
            cid, uid, workdir = entry
            self.by_id.pop(cid, None)
            self.kill_tree(pid, uid)  # the rest of its process tree, wherever it went
            try:
                os.rmdir(workdir)
            except OSError:
                shutil.rmtree(workdir, ignore_errors=True)
            self.free_uids.append(uid)
            self.send({"op": "exit", "id": cid, "status": status,
                       "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss})

    def shutdown(self) -> None:
        for pid, (_cid, uid, _w) in list(self.children.items()):
            self.kill_tree(pid, uid)
        if getattr(self, "work_root", WORK_ROOT) != WORK_ROOT:
            shutil.rmtree(self.work_root, ignore_errors=True)


def _python_paths() -> list[str]:
    """Directories the call uids must be able to read: the interpreter and its import path."""
    import tirl

    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.dirname(os.path.abspath(tirl.__file__)))]
    return [p for p in paths + list(sys.path) if p and os.path.isabs(p) and os.path.isdir(p)]


def _warm() -> None:
    """Touch the lazily-built parts of the preloaded libraries once, in the zygote."""
    mods = sys.modules
    try:
        if "sympy" in mods:
            sp = mods["sympy"]
            x = sp.Symbol("x")
            sp.simplify(sp.sin(x) ** 2 + sp.cos(x) ** 2)
            sp.factor(x**2 - 1)
            sp.integrate(x**2, x)
            sp.solve(x**2 - 4, x)
            sp.Rational(1, 3) + sp.sqrt(2)
            str(sp.latex(x**2))
        if "numpy" in mods:
            np = mods["numpy"]
            a = np.arange(16.0).reshape(4, 4)
            np.linalg.det(a + np.eye(4))
            str(a)
    except Exception:
        pass


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass


def _child(msg: dict, fds: list[int], uid: int, workdir: str, info: dict) -> int:
    """In the forked child: isolate, then run the cell (and later ones for a session)."""
    isolation.set_pdeathsig(signal.SIGKILL)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    session = msg.get("mode") == "session"
    out_w, err_w = fds[0], fds[1]
    ctl_fd = fds[2] if session else -1
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    if session:
        os.dup2(ctl_fd, 3)
        os.set_inheritable(3, False)
        os.closerange(4, _MAX_FD)
    else:
        os.closerange(3, _MAX_FD)
    os.set_inheritable(0, True)
    lim = msg.get("limits", {})
    try:
        os.setpriority(os.PRIO_PROCESS, 0, int(lim.get("nice", 10)))
    except OSError:
        pass
    mem = int(lim.get("memory_mb", 1024)) * 1024 * 1024
    _set_limit(resource.RLIMIT_AS, mem)
    cpu = max(1, int(-(-float(lim.get("cpu_s", 10)) // 1)))
    if session:
        _set_limit(resource.RLIMIT_CPU, cpu, int(lim.get("session_cpu_s", 3600)))
    else:
        _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    _set_limit(resource.RLIMIT_FSIZE, int(lim.get("fsize_mb", 64)) * 1024 * 1024)
    _set_limit(resource.RLIMIT_NPROC, int(lim.get("nproc", 32)))
    _set_limit(resource.RLIMIT_NOFILE, int(lim.get("nofile", 256)))
    _set_limit(resource.RLIMIT_CORE, 0)
    os.chdir(workdir)
    if info.get("uid_drop"):
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    isolation.set_no_new_privs()
    if info.get("seccomp"):
        isolation.install_seccomp()
    # the zygote's own environment is already exactly CHILD_ENV (see Zygote.setup)
    os.environ["HOME"] = workdir
    os.environ["TMPDIR"] = workdir
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.argv = [""]
    sys.path.insert(0, workdir)
    glb: dict = {"__name__": "__main__", "__builtins__": builtins}
    sys.stdin = io.StringIO(msg.get("stdin", ""))
    outcome = run_cell(msg.get("code", ""), glb)
    _flush()
    if not session:
        return outcome.exit_code
    ctl = socket.socket(fileno=3)
    protocol.send(ctl, {"kind": outcome.kind, "exit_code": outcome.exit_code})
    while True:
        got = protocol.recv(ctl)
        if got is None:
            return 0
        cell, extra = got
        for fd in extra:
            os.close(fd)
        used = sum(os.times()[:2])
        soft = int(used + float(cell.get("cpu_s", 10))) + 1
        _set_limit(resource.RLIMIT_CPU, soft, resource.getrlimit(resource.RLIMIT_CPU)[1])
        sys.stdin = io.StringIO(cell.get("stdin", ""))
        outcome = run_cell(cell.get("code", ""), glb)
        _flush()
        protocol.send(ctl, {"kind": outcome.kind, "exit_code": outcome.exit_code})


def _flush() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


def main(argv: list[str]) -> int:
    fd = int(argv[1])
    cfg = json.loads(argv[2]) if len(argv) > 2 else {}
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    z = Zygote(sock, cfg)
    z.setup()
    try:
        z.serve()
    finally:
        z.shutdown()
    return 0


assert MEMORY_EXIT  # re-exported for the supervisor's classification

if __name__ == "__main__":
    sys.exit(main(sys.argv))
