"""Load and failure: many requests all answered, no zombies, queue backpressure, zygote crash recovery."""

import asyncio
import os
import signal

import pytest

from tirl.sandbox.pool import Sandbox
from tirl.sandbox.types import ExecRequest

from .test_isolation import _no_sandbox_processes


def _zombies_of(*parents: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) in parents:
                out.append(int(name))
    return out


async def _run_with_cap(sb, reqs, in_flight):
    sem = asyncio.Semaphore(in_flight)

    async def one(r):
        async with sem:
            return await sb.run(r.code, r.stdin, r.timeout_s, r.session_id)

    return await asyncio.gather(*(one(r) for r in reqs))


@pytest.mark.slow
async def test_1000_requests_at_64_in_flight_no_zombies():
    async with Sandbox(slots=8, preload=["math"]) as sb:
        reqs = [ExecRequest(f"print({i} * 2)") for i in range(900)]
        reqs += [ExecRequest("1/0")] * 50 + [ExecRequest("import time; time.sleep(5)", timeout_s=0.5)] * 50
        res = await _run_with_cap(sb, reqs, 64)
        assert len(res) == 1000
        assert [r.stdout for r in res[:900]] == [f"{i * 2}\n" for i in range(900)]
        assert all(r.status == "error" for r in res[900:950])
        assert all(r.status == "timeout" for r in res[950:])
        assert _zombies_of(os.getpid(), sb.isolation["pid"]) == []
        assert await _no_sandbox_processes(sb) == []
        assert sb.stats()["busy"] == 0 and sb.stats()["queued"] == 0


@pytest.mark.slow
async def test_4096_submitted_at_once_all_answered():
    async with Sandbox(slots=8, preload=[]) as sb:
        res = await sb.run_batch([ExecRequest(f"{i}") for i in range(4096)])
        assert [r.stdout for r in res] == [f"{i}\n" for i in range(4096)]
        assert {r.status for r in res} == {"ok"}
        assert max(r.queue_ms for r in res) > max(r.exec_ms for r in res)  # they queued, no timeouts


async def test_queue_full_is_typed_backpressure():
    async with Sandbox(slots=1, queue_size=2, preload=[]) as sb:
        res = await sb.run_batch([ExecRequest("import time; time.sleep(0.5)")] * 6)
        statuses = [r.status for r in res]
        assert statuses.count("ok") == 3
        assert [r.reason for r in res if r.status == "infra_error"] == ["queue_full"] * 3


async def test_execution_clock_starts_at_the_slot():
    async with Sandbox(slots=1, preload=[]) as sb:
        res = await sb.run_batch([ExecRequest("import time; time.sleep(0.6)", timeout_s=1.0)] * 3)
        assert [r.status for r in res] == ["ok"] * 3  # 1.8 s total, but each ran under its 1 s limit
        assert res[2].queue_ms > 900


async def test_zygote_crash_recovery():
    async with Sandbox(slots=4, preload=[]) as sb:
        await sb.run("s = 1", session_id="lost")
        zpid = sb.isolation["pid"]
        running = [asyncio.create_task(sb.run("import time; time.sleep(30)")) for _ in range(3)]
        await asyncio.sleep(0.5)
        os.kill(zpid, signal.SIGKILL)
        res = await asyncio.wait_for(asyncio.gather(*running), 30)
        assert [(r.status, r.reason) for r in res] == [("infra_error", "zygote_died")] * 3
        r = await asyncio.wait_for(sb.run("6 * 7"), 60)
        assert r.status == "ok" and r.stdout == "42\n"
        assert sb.isolation["pid"] != zpid and sb.stats()["zygote_restarts"] == 1
        r = await sb.run("s", session_id="lost")
        assert r.session_reset and "NameError" in r.stderr
        assert await sb.close_session("lost")
        assert await _no_sandbox_processes(sb) == []
        assert "tirl_sandbox_zygote_restarts_total 1" in sb.metrics_text()


async def test_metrics_count_results_by_status():
    async with Sandbox(slots=2, preload=[]) as sb:
        await sb.run_batch([ExecRequest("1"), ExecRequest("1/0"), ExecRequest("1")])
        text = sb.metrics_text()
        assert 'tirl_sandbox_results_total{status="ok"} 2' in text
        assert 'tirl_sandbox_results_total{status="error"} 1' in text
        assert "tirl_sandbox_exec_ms_count 3" in text and "tirl_sandbox_queue_depth 0" in text


async def test_light_zygote_crash_spares_full_zygote_sessions():
    async with Sandbox(slots=4, preload=["math", "numpy"]) as sb:
        pids = sb.isolation["pids"]
        assert set(pids) == {"full", "light"}
        await sb.run("import numpy as np\nkept = np.arange(3)", session_id="keep")
        plain = asyncio.create_task(sb.run("import time; time.sleep(30)"))  # stdlib only: light
        await asyncio.sleep(0.5)
        os.kill(pids["light"], signal.SIGKILL)
        r = await asyncio.wait_for(plain, 30)
        assert (r.status, r.reason) == ("infra_error", "zygote_died")
        r = await sb.run("int(kept.sum())", session_id="keep")
        assert r.ok and r.stdout == "3\n" and not r.session_reset
        r = await asyncio.wait_for(sb.run("print('back')"), 60)
        assert r.ok and sb.isolation["pids"]["light"] != pids["light"]
        await sb.close_session("keep")
