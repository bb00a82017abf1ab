"""Stateful sessions: state kept, sessions isolated, resets reported, TTL and cap eviction."""

import asyncio

import pytest

from tirl.sandbox.pool import Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_state_persists_and_errors_keep_it(sb):
    assert (await sb.run("import sympy as sp\nx = sp.Symbol('x')\nacc = [1]", session_id="a")).ok
    r = await sb.run("acc.append(2)\n1/0", session_id="a")
    assert r.status == "error" and not r.session_reset and "ZeroDivisionError" in r.stderr
    r = await sb.run("print(sp.expand((x + 1)**2))\nacc", session_id="a")
    assert r.status == "ok" and r.stdout == "x**2 + 2*x + 1\n[1, 2]\n"
    assert r.session_id == "a" and not r.session_reset
    assert await sb.close_session("a") is True
    assert await sb.close_session("a") is False


async def test_sessions_are_isolated_from_each_other(sb):
    await sb.run("secret = 'A'\nimport os\nopen('f.txt', 'w').write('A')", session_id="s1")
    r2 = await sb.run("import os\nprint(os.listdir('.'))\nsecret", session_id="s2")
    assert r2.status == "error" and "NameError" in r2.stderr and r2.stdout == "[]\n"
    p1 = int((await sb.run("os.getpid()", session_id="s1")).stdout)
    r = await sb.run(f"try:\n    open('/proc/{p1}/mem', 'rb').read(1)\n    'READ'\n"
                     "except OSError as e:\n    type(e).__name__", session_id="s2")
    assert "READ" not in r.stdout
    assert (await sb.run("secret", session_id="s1")).stdout == "'A'\n"
    for s in ("s1", "s2"):
        await sb.close_session(s)


async def test_stdin_per_cell(sb):
    await sb.run("total = 0", session_id="in")
    for v in (3, 4):
        await sb.run("total += int(input())", stdin=f"{v}\n", session_id="in")
    assert (await sb.run("total", session_id="in")).stdout == "7\n"
    await sb.close_session("in")


async def test_timeout_resets_session_and_says_so(sb):
    await sb.run("v = 1", session_id="t")
    r = await sb.run("import time\nprint('before')\ntime.sleep(60)", session_id="t", timeout_s=1.0)
    assert r.status == "timeout" and r.session_reset and r.stdout == "before\n"
    r = await sb.run("v", session_id="t")
    assert r.status == "error" and r.session_reset and "NameError" in r.stderr
    r = await sb.run("v = 2\nv", session_id="t")
    assert r.ok and not r.session_reset
    await sb.close_session("t")


async def test_crash_resets_session(sb):
    await sb.run("keep = 1", session_id="c")
    r = await sb.run("import os\nos._exit(3)", session_id="c")
    assert r.session_reset and r.status == "error" and r.exit_code == 3
    r = await sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", session_id="c")
    assert r.session_reset and r.status == "killed"
    await sb.close_session("c")


async def test_session_memory_and_output_limits(sb):
    r = await sb.run("x = bytearray(8 * 2**30)", session_id="m")
    assert r.status == "memory" and not r.session_reset  # MemoryError is caught: state survives
    r = await sb.run("while True:\n    print('z' * 4096)", session_id="m")
    assert r.status == "output_limit" and r.truncated and r.session_reset
    await sb.close_session("m")


async def test_cells_of_one_session_run_in_order(sb):
    await sb.run("log = []", session_id="o")
    await asyncio.gather(*(sb.run(f"log.append({i})", session_id="o") for i in range(20)))
    r = await sb.run("log", session_id="o")
    assert sorted(eval(r.stdout)) == list(range(20))
    await sb.close_session("o")


async def test_ttl_and_cap_eviction():
    async with Sandbox(slots=2, preload=[], session_ttl_s=0.5, max_sessions=2) as sb:
        await sb.run("a = 1", session_id="x")
        await asyncio.sleep(2.0)
        r = await sb.run("a", session_id="x")
        assert r.session_reset and "NameError" in r.stderr
        await sb.run("b = 1", session_id="y")
        await sb.run("c = 1", session_id="z")  # cap 2: evicts the least recently used (x)
        assert sb.stats()["sessions"] == 2
        assert (await sb.run("b", session_id="y")).stdout == "1\n"
        r = await sb.run("a = 5", session_id="x")
        assert r.ok and r.session_reset
