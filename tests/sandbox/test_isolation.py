"""Isolation: no writes outside the temp dir, no network, not root, no server env or memory,
child processes die with the call, fork and memory bombs contained, output flood capped."""

import asyncio
import os
import resource
import socket

import pytest

from tirl.sandbox.pool import Sandbox
from tirl.sandbox.types import ExecRequest

pytestmark = pytest.mark.asyncio(loop_scope="module")
def _sandbox_processes(sb) -> list[tuple[int, int]]:
    """(pid, uid) of every live process running as one of this sandbox's call uids."""
    ranges = [r for r in sb.isolation["uid_ranges"].values() if r]
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            uid = int(line.split()[1])
                            if any(lo <= uid < hi for lo, hi in ranges):
                                found.append((int(name), uid))
                            break
            except OSError:
                pass
    return found


async def _no_sandbox_processes(sb, timeout_s: float = 10.0) -> list:
    left = _sandbox_processes(sb)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while left and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        left = _sandbox_processes(sb)
    return left


def _isolated(sb) -> dict:
    return sb.isolation


async def test_not_root_and_own_uid(sb):
    r1, r2 = await sb.run_batch([ExecRequest("import os, time; time.sleep(0.3); os.getresuid(), os.getgroups()")] * 2)
    assert r1.status == r2.status == "ok"
    (u1, _, _), g1 = eval(r1.stdout)
    (u2, _, _), _ = eval(r2.stdout)
    assert u1 != 0 and u2 != 0 and g1 == []
    assert u1 != u2  # concurrent calls never share a uid


async def test_no_writes_outside_temp_dir(sb):
    code = (
        "import os\nres = {}\n"
        "for p in ['/tmp/x', '/var/tmp/x', '/dev/shm/x', '/etc/x', '/root/x', '/x', "
        "os.path.expanduser('~/../x'), '" + os.getcwd() + "/x']:\n"
        "    try:\n        open(p, 'w').write('1')\n        res[p] = 'WROTE'\n"
        "    except OSError as e:\n        res[p] = type(e).__name__\n"
        "open('mine.txt', 'w').write('ok')\nres['cwd'] = open('mine.txt').read()\n"
        "res['cwd_empty_at_start'] = sorted(os.listdir('.'))\nres"
    )
    r = await sb.run(code)
    assert r.status == "ok", r.stderr
    res = eval(r.stdout)
    assert res.pop("cwd") == "ok" and res.pop("cwd_empty_at_start") == ["mine.txt"]
    assert "WROTE" not in res.values(), res
    assert not os.path.exists(os.getcwd() + "/x")
    # the next call starts in a fresh empty directory
    r = await sb.run("import os; os.listdir('.')")
    assert r.stdout == "[]\n"


async def test_no_network(sb):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        code = (
            "import socket\nout = []\n"
            f"for host in ['127.0.0.1', '1.1.1.1']:\n"
            "    try:\n        s = socket.create_connection((host, " + str(port) + "), timeout=2)\n"
            "        out.append('CONNECTED ' + host)\n"
            "    except OSError as e:\n        out.append(type(e).__name__)\n"
            "out"
        )
        r = await sb.run(code)
        assert r.status == "ok" and "CONNECTED" not in r.stdout, r.stdout
        srv.setblocking(False)
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()
    if _isolated(sb).get("network"):
        # even a raw AF_INET socket is refused (seccomp), and there is no interface but lo
        r = await sb.run("open('/proc/net/dev').read().count(':')")
        assert r.stdout.strip() in ("1", "0") or r.status == "ok"


async def test_no_server_environment_or_memory(sb):
    os.environ["TIRL_TEST_SECRET"] = "hunter2"
    try:
        me = os.getpid()
        pids = (me, *sb.isolation["pids"].values())
        code = (
            "import os\nout = {'env': dict(os.environ)}\n"
            f"for pid in {pids}:\n"
            "    for what in ('environ', 'mem', 'maps'):\n"
            "        try:\n"
            "            with open(f'/proc/{pid}/{what}', 'rb') as f:\n"
            "                f.read(64)\n"
            "            out[f'{pid}/{what}'] = 'READ'\n"
            "        except OSError as e:\n"
            "            out[f'{pid}/{what}'] = type(e).__name__\n"
            "out"
        )
        r = await sb.run(code)
        assert r.status == "ok", r.stderr
        out = eval(r.stdout)
        env = out.pop("env")
        assert "TIRL_TEST_SECRET" not in env and "hunter2" not in str(env)
        assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "OPENBLAS_NUM_THREADS",
                            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONDONTWRITEBYTECODE"}
        assert "READ" not in out.values(), out
    finally:
        del os.environ["TIRL_TEST_SECRET"]


async def test_seccomp_blocks_namespaces_and_ptrace(sb):
    if not _isolated(sb).get("seccomp"):
        pytest.skip("no seccomp filter on this machine")
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "r1 = libc.unshare(0x10000000)\ne1 = ctypes.get_errno()\n"
        "r2 = libc.ptrace(16, os.getppid(), 0, 0)\ne2 = ctypes.get_errno()\n"
        "import socket\ntry:\n    socket.socket(socket.AF_INET)\n    inet = 'allowed'\n"
        "except OSError as e:\n    inet = e.errno\n"
        "unix = socket.socket(socket.AF_UNIX).family.name\n"
        "(r1, e1, r2, e2, inet, unix)"
    )
    r = await sb.run(code)
    assert r.status == "ok", r.stderr
    r1, e1, r2, e2, inet, unix = eval(r.stdout)
    assert (r1, e1) == (-1, 1) and (r2, e2) == (-1, 1)
    assert inet == 13 and unix == "AF_UNIX"


async def test_children_die_with_the_call(sb):
    code = (
        "import subprocess, os, sys\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        import time; time.sleep(300)\n"
        "    os._exit(0)\n"
        "print(p.pid)"
    )
    r = await sb.run(code)
    assert r.status == "ok", r.stderr
    pid = int(r.stdout)
    assert await _no_sandbox_processes(sb) == []
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]


async def test_children_die_at_timeout(sb):
    code = ("import subprocess, time\n"
            "subprocess.Popen(['sleep', '300'], start_new_session=True)\ntime.sleep(300)")
    r = await sb.run(code, timeout_s=1.0)
    assert r.status == "timeout"
    assert await _no_sandbox_processes(sb) == []


async def test_fork_bomb_contained(sb):
    r = await sb.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                     timeout_s=2.0)
    assert r.status in ("timeout", "error", "killed")
    assert await _no_sandbox_processes(sb) == []
    assert (await sb.run("1 + 1")).stdout == "2\n"


async def test_kill_minus_one_hurts_nobody_else(sb):
    r = await sb.run("import os, signal\nos.kill(-1, signal.SIGKILL)\n'alive'")
    assert r.status == "ok" and r.stdout == "'alive'\n"
    assert (await sb.run("2 + 2")).stdout == "4\n"


async def test_memory_bomb_contained(sb):
    r = await sb.run("x = []\nwhile True:\n    x.append(bytearray(10**7))")
    assert r.status == "memory"
    r = await sb.run("import numpy as np\nnp.ones((40000, 40000))")
    assert r.status == "memory"


async def test_output_flood_is_capped_and_server_memory_flat(sb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r1 = await sb.run("import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)")
    r2 = await sb.run("import os\nb = b'y' * 2**20\nfor _ in range(200):\n    os.write(2, b)")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for r in (r1, r2):
        assert r.status == "output_limit" and r.truncated
        assert len(r.stdout) + len(r.stderr) == sb.cfg.max_output_bytes
    assert after - before < 50 * 1024, f"server peak RSS grew by {(after - before) / 1024:.0f} MiB"


async def test_server_environment_never_reaches_zygote():
    os.environ["TIRL_ZYGOTE_SECRET"] = "s3cret"
    try:
        async with Sandbox(slots=1, preload=[]) as sb:
            r = await sb.run("import os; sorted(os.environ)")
            assert "TIRL_ZYGOTE_SECRET" not in r.stdout
            for pid in sb.isolation["pids"].values():
                with open(f"/proc/{pid}/environ", "rb") as f:
                    assert b"s3cret" not in f.read()
    finally:
        del os.environ["TIRL_ZYGOTE_SECRET"]


async def test_paths_under_world_writable_dirs_are_carried(tmp_path):  # the module runs on one event loop
    """A venv or checkout under /tmp (a CI clone) must survive the empty tmpfs over /tmp:
    `_under` picks the top-most such directories to carry across."""
    from tirl.sandbox.isolation import _under

    venv = tmp_path / "repo" / ".venv"
    site = venv / "lib" / "site-packages"
    site.mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    root = str(tmp_path.parent)
    assert _under([str(site), str(venv), "/usr/lib", str(other)], [root]) == sorted(
        [os.path.realpath(venv), os.path.realpath(other)])
    assert _under(["/usr/lib"], [root]) == []
