"""Pure parts: zygote routing, seccomp program, exposure planning; doctor checks; make_executor; CLI."""

import asyncio
import os
import signal
import socket
import struct
import sys

import pytest

from tirl.sandbox import isolation, make_executor
from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.pool import imported_modules, needs_full_zygote
from tirl.sandbox.runner import format_user_error


def test_routing_by_imports():
    assert imported_modules("import numpy as np\nfrom sympy import Symbol\nimport os.path") == {"numpy", "sympy", "os"}
    assert imported_modules("def f(:") is None
    assert not needs_full_zygote("print(1 + 1)")
    assert not needs_full_zygote("import math, itertools\nfrom fractions import Fraction")
    assert needs_full_zygote("import math\nimport sympy")
    assert needs_full_zygote("def f():\n    from numpy import linalg\n    return linalg")
    assert not needs_full_zygote("from . import x")  # relative: nothing third-party


def test_seccomp_program_shape():
    prog = isolation.seccomp_filter({"ptrace": 101})
    ins = [struct.unpack("HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert ins[0] == (0x20, 0, 0, 4) and ins[1][3] == isolation.AUDIT_ARCH_X86_64
    assert (0x15, 0, 1, 101) in ins
    assert ins[-1] == (0x06, 0, 0, 0x7FFF0000)  # default: allow
    for k, (code, jt, jf, _) in enumerate(ins):  # every jump lands inside the program
        if code in (0x15, 0x35, 0x45):
            assert k + 1 + max(jt, jf) < len(ins)


def test_plan_exposures():
    import pathlib
    import shutil
    import tempfile

    tmp_path = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm"))  # traversable ancestors
    try:
        _check_plan(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _check_plan(tmp_path):
    locked = tmp_path / "locked"
    (locked / "py" / "lib").mkdir(parents=True)
    (locked / "other").mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(locked, 0o700)
    plan = isolation.plan_exposures([str(locked / "py"), str(locked / "py" / "lib"), str(tmp_path)])
    assert plan == {str(locked): [str(locked / "py")]}


def test_user_error_format_has_no_internal_frames():
    def inner():
        exec(compile("def g():\n    return undefined_name\ng()", "<cell>", "exec"), {})

    try:
        inner()
    except NameError as e:
        text = format_user_error(e)
    assert text.startswith("Traceback (most recent call last):\n")
    assert "inner" not in text and __file__ not in text
    assert text.strip().endswith("NameError: name 'undefined_name' is not defined")


def test_doctor_checks_are_fast_and_typed():
    from tirl.health import Check
    from tirl.sandbox.health import checks

    cs = checks()
    assert cs and all(isinstance(c, Check) for c in cs)
    names = [c.feature for c in cs]
    assert "sandbox: zygote can fork" in names and "sandbox: network isolation" in names
    assert cs[0].ok
    net = next(c for c in cs if c.feature == "sandbox: network isolation")
    assert net.ok or "WARNING" in net.detail


async def test_make_executor_in_process():
    ex = await make_executor(SandboxConfig(slots=1, preload=[]))
    try:
        r = await ex.run("6 * 7")
        assert r.ok and r.stdout == "42\n"
    finally:
        await ex.close()


@pytest.mark.slow
async def test_cli_serve_end_to_end():
    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tirl.cli", "sandbox", "serve", "--port", str(port), "--slots", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert f"http://127.0.0.1:{port}" in line.decode()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/v1/execute", json={"code": "2**5"}) as r:
                assert (await r.json())["stdout"] == "32\n"
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert 'tirl_sandbox_results_total{status="ok"} 1' in await r.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
