"""Each ExecResult status, notebook semantics and short user tracebacks."""

import pytest

from tirl.sandbox.types import ExecRequest

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_ok_prints_last_expression(sb):
    r = await sb.run("x = 20\nprint('hi')\nx * 2 + 2")
    assert r.status == "ok" and r.exit_code == 0
    assert r.stdout == "hi\n42\n"
    assert r.stderr == "" and not r.truncated and r.session_id is None


async def test_none_expression_prints_nothing(sb):
    r = await sb.run("x = None\nx")
    assert r.status == "ok" and r.stdout == ""


async def test_stdin_is_readable(sb):
    r = await sb.run("a, b = map(int, input().split())\nprint(a + b)", stdin="3 4\n")
    assert r.status == "ok" and r.stdout == "7\n"


async def test_error_shows_only_user_frames(sb):
    r = await sb.run("def f(x):\n    return 1 / x\n\nf(0)")
    assert r.status == "error" and r.exit_code == 1
    assert "ZeroDivisionError: division by zero" in r.stderr
    assert 'File "<cell>", line 4' in r.stderr and 'File "<cell>", line 2, in f' in r.stderr
    assert "tirl" not in r.stderr and "runner" not in r.stderr


async def test_syntax_error(sb):
    r = await sb.run("def f(:\n  pass")
    assert r.status == "error"
    assert "SyntaxError" in r.stderr and "line 1" in r.stderr


async def test_sys_exit_codes(sb):
    r0, r3 = await sb.run_batch([ExecRequest("import sys; sys.exit(0)"),
                                 ExecRequest("import sys; print('a'); sys.exit(3)")])
    assert r0.status == "ok" and r0.exit_code == 0
    assert r3.status == "error" and r3.exit_code == 3 and r3.stdout == "a\n"
    r70, r201 = await sb.run_batch([ExecRequest("raise SystemExit(70)"), ExecRequest("import sys; sys.exit(201)")])
    assert (r70.status, r70.exit_code) == (r201.status, r201.exit_code) == ("error", 1)


async def test_wall_timeout_keeps_partial_output(sb):
    r = await sb.run("import time\nprint('started')\ntime.sleep(60)", timeout_s=1.0)
    assert r.status == "timeout" and r.reason == "wall_time", r
    assert r.stdout == "started\n"
    assert 900 <= r.exec_ms < 15000


async def test_cpu_time_limit(sb):
    # wall limit generous, CPU limit from the sandbox's cpu_time_s = timeout by default
    r = await sb.run("while True:\n    pass", timeout_s=1.0)
    assert r.status == "timeout"


async def test_memory(sb):
    r = await sb.run("x = bytearray(8 * 2**30)")
    assert r.status == "memory" and "MemoryError" in r.stderr


async def test_output_limit(sb):
    r = await sb.run("while True:\n    print('x' * 1000)")
    assert r.status == "output_limit" and r.truncated
    assert len(r.stdout) == sb.cfg.max_output_bytes


async def test_killed_by_signal(sb):
    r = await sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert r.status == "killed" and r.exit_code == -11


async def test_sympy_and_numpy_are_warm(sb):
    r = await sb.run("import sympy as sp, numpy as np\nx = sp.Symbol('x')\n"
                     "print(sp.factor(x**2 - 1))\nint(np.arange(5).sum())")
    assert r.status == "ok" and r.stdout == "(x - 1)*(x + 1)\n10\n"


async def test_batch_in_order(sb):
    reqs = [ExecRequest(f"{i} * 3") for i in range(40)]
    res = await sb.run_batch(reqs)
    assert [r.stdout for r in res] == [f"{i * 3}\n" for i in range(40)]


async def test_unicode_output(sb):
    r = await sb.run("print('π ≈ 3.14159')\n'∑'")
    assert r.status == "ok" and r.stdout == "π ≈ 3.14159\n'∑'\n"


async def test_large_code_and_stdin_travel_out_of_band(sb):
    code = "data = " + repr("a" * 100_000) + "\nimport sys\ns = sys.stdin.read()\nprint(len(data), len(s))"
    r = await sb.run(code, stdin="b" * 500_000)
    assert r.status == "ok" and r.stdout == "100000 500000\n"
    r = await sb.run(code, stdin="c" * 300_000, session_id="big")
    assert r.status == "ok" and r.stdout == "100000 300000\n"
    r = await sb.run(code + "\nlen(data)", stdin="d", session_id="big")
    assert r.stdout == "100000 1\n100000\n"
    await sb.close_session("big")


async def test_bad_timeout_is_refused(sb):
    with pytest.raises(ValueError, match="timeout_s"):
        await sb.run("1", timeout_s=-1)


async def test_closing_a_busy_session_kills_its_cell(sb):
    import asyncio

    await sb.run("v = 1", session_id="busy")
    task = asyncio.create_task(sb.run("import time\ntime.sleep(30)", session_id="busy"))
    await asyncio.sleep(0.5)
    assert await sb.close_session("busy")
    r = await asyncio.wait_for(task, 20)
    assert r.status == "killed" and r.session_reset


async def test_cancelled_call_does_not_outlive_its_request(sb):
    import asyncio

    from .test_isolation import _no_sandbox_processes

    task = asyncio.create_task(sb.run("import time\ntime.sleep(30)"))
    stask = asyncio.create_task(sb.run("import time\ntime.sleep(30)", session_id="cancel-me"))
    await asyncio.sleep(0.5)
    task.cancel()
    stask.cancel()
    for t in (task, stask):
        with pytest.raises(asyncio.CancelledError):
            await t
    assert await _no_sandbox_processes(sb) == []
    assert sb.stats()["busy"] == 0 and sb.stats()["sessions"] == 0
    r = await sb.run("v", session_id="cancel-me")
    assert r.session_reset and "NameError" in r.stderr
    await sb.close_session("cancel-me")
