"""Linux isolation primitives for the sandbox, via ctypes on libc (Python 3.11 has no os.unshare).

What it does: namespaces (``unshare``), private mounts over the world-writable directories,
``prctl`` flags (no-new-privs, parent-death signal, child subreaper), a seccomp-BPF deny-list
built as bytes by a pure function (:func:`seccomp_filter`), and :func:`kill_uid`, which kills
every process of one uid (how a call's whole process tree is ended, even members that left
its process group). Each call reports failure by returning False or raising ``OSError``;
callers decide whether a missing feature is fatal (it is not: the zygote starts anyway and
reports what it lacks in ``/healthz`` and ``tirl doctor``).

What it does not: it is no container runtime. There is no user namespace, no cgroup, no
chroot: the file system stays visible (read-only to the unprivileged uid except its own
temporary directory), and the seccomp filter is a deny-list of dangerous calls on x86_64
only (other machines run without it and say so).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import signal
import struct
import tempfile
from typing import Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_NS_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
             | CLONE_NEWPID | CLONE_NEWNET)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 1 << 14, 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {target}")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


# World-writable places a call's uid could otherwise write to (outside its temp dir).
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/dev/mqueue")


def _blocked_ancestor(path: str) -> str | None:
    """The first directory on the way to ``path`` that others may not traverse (no o+x)."""
    cur = "/"
    for part in [p for p in os.path.abspath(path).split("/") if p]:
        cur = os.path.join(cur, part)
        try:
            st = os.stat(cur)
        except OSError:
            return None
        if os.path.isdir(cur) and not st.st_mode & 0o001:
            return cur
    return None


def plan_exposures(paths: list[str]) -> dict[str, list[str]]:
    """Group the wanted directories by their first non-traversable ancestor (pure but for
    ``os.stat``): {ancestor: [top-most wanted dirs below it]}. Paths others can already
    reach are left out."""
    groups: dict[str, list[str]] = {}
    for p in sorted({os.path.realpath(x) for x in paths if x and os.path.isdir(x)}):
        anc = _blocked_ancestor(p)
        if anc is None or anc == p:
            continue
        subs = groups.setdefault(anc, [])
        if not any(p == s or p.startswith(s + "/") for s in subs):
            subs.append(p)
    return groups


def expose_to_others(paths: list[str], stage_root: str = "/tmp") -> list[str]:
    """Make ``paths`` (e.g. a Python installation under a 0700 /root) reachable by the
    call uids, inside the caller's private mount namespace only: each blocking ancestor gets
    an empty 0755 tmpfs, with just the wanted directories bind-mounted back into it. The
    rest of that ancestor (say, /root's other files) becomes invisible. Returns the
    ancestors covered."""
    done = []
    for n, (anc, subs) in enumerate(plan_exposures(paths).items()):
        stages = []
        for i, sub in enumerate(subs):
            st = os.path.join(stage_root, f".tirl-stage-{n}-{i}")
            os.makedirs(st, exist_ok=True)
            mount(sub, st, None, MS_BIND | MS_REC, None)
            stages.append(st)
        mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for st, sub in zip(stages, subs):
            os.makedirs(sub, mode=0o755, exist_ok=True)
            mount(st, sub, None, MS_MOVE, None)
            os.rmdir(st)
        done.append(anc)
    return done


def _under(paths: list[str], roots: list[str]) -> list[str]:
    """The top-most of ``paths`` (resolved) that lie below one of ``roots``."""
    roots = [os.path.realpath(r) for r in roots]
    found: list[str] = []
    for p in sorted({os.path.realpath(x) for x in paths if x and os.path.isdir(x)}):
        if any(p.startswith(r + "/") for r in roots) and not any(
            p == f or p.startswith(f + "/") for f in found
        ):
            found.append(p)
    return found


@contextlib.contextmanager
def _carried_across(paths: list[str]) -> Iterator[None]:
    """Bind ``paths`` aside, let the body mount over their parents, then move them back
    into place (inside this private mount namespace only). The stage directory is made in
    /run (root-only) and removed again."""
    if not paths:
        yield
        return
    stage = tempfile.mkdtemp(prefix=".tirl-carry-", dir="/run" if os.path.isdir("/run") else "/")
    stages: list[str] = []
    try:
        for i, p in enumerate(paths):
            st = os.path.join(stage, str(i))
            os.mkdir(st)
            stages.append(st)
            mount(p, st, None, MS_BIND | MS_REC, None)
        yield
        for st, p in zip(stages, paths):
            os.makedirs(p, mode=0o755, exist_ok=True)
            mount(st, p, None, MS_MOVE, None)
    finally:
        # rmdir only (never a recursive delete: a stage may still be a bind mount of the
        # real installation if something failed half-way; rmdir then fails harmlessly)
        for d in [*stages, stage]:
            try:
                os.rmdir(d)
            except OSError:
                pass


def isolate_zygote(tmp_size_mb: int = 1024, expose: list[str] | None = None) -> dict[str, str | bool]:
    """Put the calling process (the zygote, before it forks anything) into a fresh network
    namespace and a private mount namespace with empty root-only tmpfs over the
    world-writable directories. Returns what worked: {"network": bool, "mounts": bool, ...}."""
    out: dict[str, str | bool] = {}
    try:
        unshare(CLONE_NEWNET)
        out["network"] = True
    except OSError as err:
        out["network"] = False
        out["network_error"] = str(err)
    try:
        unshare(CLONE_NEWNS)
        mount("none", "/", None, MS_REC | MS_PRIVATE, None)
        hidden = [d for d in WORLD_WRITABLE if os.path.isdir(d) and not os.path.islink(d)]
        # the Python installation or the repository may itself live under /tmp (a CI clone,
        # a venv in a temp dir): carry those directories across the empty tmpfs
        with _carried_across(_under(expose or [], hidden)):
            for d in hidden:
                mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV,
                      f"mode=0711,size={tmp_size_mb}m")
        out["mounts"] = True
        if expose:
            out["exposed"] = ",".join(expose_to_others(expose))
    except OSError as err:
        out["mounts"] = False
        out["mounts_error"] = str(err)
    return out


def kill_uid(uid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process whose real or saved uid is ``uid`` (never the caller).

    The caller must be root and single-threaded: it becomes ``uid`` for the duration of one
    ``kill(-1)`` (real and effective uid, keeping saved uid 0 to come back), so the kernel's
    own permission check picks exactly that uid's processes. A no-op for uid 0.
    """
    if uid <= 0:
        raise ValueError(f"kill_uid needs an unprivileged uid, got {uid}")
    os.setresuid(uid, uid, 0)
    try:
        if os.getresuid() != (uid, uid, 0):  # never signal as root by accident
            raise OSError(errno.EPERM, f"could not become uid {uid}")
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            pass  # no process of that uid: nothing to do
    finally:
        os.setresuid(0, 0, 0)


def uids_running(lo: int, hi: int) -> set[int]:
    """Real uids in [lo, hi) that have a process (a scan of /proc; used at zygote start)."""
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        uid = int(line.split()[1])
                        if lo <= uid < hi:
                            found.add(uid)
                        break
        except OSError:
            continue
    return found


# --- seccomp -------------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
# x86_64 syscall numbers denied to user code (EPERM). None of these is needed by numeric
# Python; all of them widen the kernel attack surface or reach outside the call.
DENIED_X86_64: dict[str, int] = {
    "ptrace": 101, "syslog": 103, "personality": 135, "pivot_root": 155, "chroot": 161,
    "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
_NR_SOCKET, _NR_CLONE, _NR_CLONE3 = 41, 56, 435
_AF_UNIX = 1

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_filter(denied: dict[str, int] | None = None) -> bytes:
    """The BPF program (x86_64): wrong arch → kill; x32 calls → EPERM; each denied syscall →
    EPERM; ``clone`` with namespace flags → EPERM; ``clone3`` → ENOSYS (so libc falls back to
    ``clone``, whose flags we can see); ``socket`` for any family but AF_UNIX → EACCES;
    everything else allowed. Pure: returns the packed ``struct sock_filter`` array."""
    denied = DENIED_X86_64 if denied is None else denied
    eperm = _RET_ERRNO | errno.EPERM
    prog = [
        _ins(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _ins(_BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _ins(_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),
        _ins(_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _ins(_BPF_JGE_K, 0, 1, 0x40000000),
        _ins(_BPF_RET_K, 0, 0, eperm),
    ]
    for nr in sorted(set(denied.values())):
        prog += [_ins(_BPF_JEQ_K, 0, 1, nr), _ins(_BPF_RET_K, 0, 0, eperm)]
    prog += [
        _ins(_BPF_JEQ_K, 0, 1, _NR_CLONE3),
        _ins(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
        # clone(flags, ...): args[0] low word at offset 16
        _ins(_BPF_JEQ_K, 0, 3, _NR_CLONE),
        _ins(_BPF_LD_W_ABS, 0, 0, 16),
        _ins(_BPF_JSET_K, 0, 1, _NS_FLAGS),
        _ins(_BPF_RET_K, 0, 0, eperm),
        _ins(_BPF_LD_W_ABS, 0, 0, 0),  # reload nr (clone path falls through here too)
        _ins(_BPF_JEQ_K, 0, 3, _NR_SOCKET),
        _ins(_BPF_LD_W_ABS, 0, 0, 16),
        _ins(_BPF_JEQ_K, 1, 0, _AF_UNIX),
        _ins(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EACCES),
        _ins(_BPF_RET_K, 0, 0, _RET_ALLOW),
    ]
    return b"".join(prog)


def seccomp_supported() -> bool:
    return platform.machine() == "x86_64" and os.uname().sysname == "Linux"


_SECCOMP_PROG = seccomp_filter()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# Built once at import (in the zygote), so that a child only pays for the prctl itself.
_SECCOMP_BUF = ctypes.create_string_buffer(_SECCOMP_PROG, len(_SECCOMP_PROG))
_SECCOMP_FPROG = _SockFprog(len(_SECCOMP_PROG) // 8, ctypes.cast(_SECCOMP_BUF, ctypes.c_void_p))
_SECCOMP_FPROG_ADDR = ctypes.addressof(_SECCOMP_FPROG)


def install_seccomp() -> None:
    """Install the filter on the calling process (needs no-new-privs or root first)."""
    if not seccomp_supported():
        raise OSError(errno.ENOSYS, f"seccomp filter not built for {platform.machine()}")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, _SECCOMP_FPROG_ADDR, 0, 0),
           "prctl(PR_SET_SECCOMP)")
