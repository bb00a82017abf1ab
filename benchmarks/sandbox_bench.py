"""Benchmark of tirl.sandbox against the naive baseline, measured in the same run.

Naive baseline = what code-judge-style services do: a fresh ``python -c CODE`` per call,
under the same concurrency cap (and, for sessions, replaying all earlier cells each call).
Scenarios: trivial code at concurrency 1/64/512, a sympy snippet at 16/64, 10-cell sessions,
a mix with timeouts, and 4,096 requests submitted at once. Prints one JSON document with
throughput, p50/p99 latency (submit → result) and the ratios ours/naive.

    .venv/bin/python benchmarks/sandbox_bench.py [--quick] [--slots N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from tirl.sandbox.pool import Sandbox
from tirl.sandbox.types import ExecRequest

TRIVIAL = "x = sum(range(100))\nprint(x * 2)"
SYMPY = ("import sympy as sp\nx = sp.Symbol('x')\n"
         "print(sp.integrate(sp.sin(x)**2, x), sp.factor(x**4 - 1), sp.solve(x**2 - 2, x))")
SPIN = "while True:\n    pass"
SESSION_CELLS = ["import math\nacc = []"] + [f"acc.append(math.factorial({i}))\nlen(acc)"
                                              for i in range(1, 10)]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _summary(lat: list[float], wall: float, statuses: list[str]) -> dict:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return {"n": len(lat), "per_s": round(len(lat) / wall, 1),
            "ok_per_s": round(counts.get("ok", 0) / wall, 2), "p50_ms": round(_pct(lat, 0.5), 1),
            "p99_ms": round(_pct(lat, 0.99), 1), "wall_s": round(wall, 2), "statuses": counts}


def _compare(o: dict, b: dict, **extra) -> dict:
    """throughput_ratio: answered/s; goodput_ratio: ok/s (None when the baseline got no ok)."""
    return {"ours": o, "naive": b, "throughput_ratio": round(o["per_s"] / b["per_s"], 2),
            "goodput_ratio": round(o["ok_per_s"] / b["ok_per_s"], 2) if b["ok_per_s"] else None,
            **extra}


async def _capped(items, conc: int, fn):
    sem = asyncio.Semaphore(conc)
    lat: list[float] = []
    statuses: list[str] = []

    async def one(item):
        async with sem:
            t = time.monotonic()
            st = await fn(item)
            lat.append((time.monotonic() - t) * 1000)
            statuses.append(st)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in items))
    return _summary(lat, time.monotonic() - t0, statuses)


async def naive_run(code: str, timeout_s: float = 10.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={"PATH": os.environ.get("PATH", "")})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "timeout"
    return "ok" if proc.returncode == 0 else "error"


def _naive_cell(cells: list[str], k: int) -> str:
    """Replay cells 0..k in one fresh interpreter; print only the last cell's output."""
    prefix = "import contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n"
    body = "".join("    " + line + "\n" for c in cells[:k] for line in c.splitlines()) or "    pass\n"
    return prefix + body + cells[k]


async def bench(quick: bool, slots: int) -> dict:
    scale = 0.25 if quick else 1.0

    def n(x: int) -> int:
        return max(8, int(x * scale))

    out: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
                 "slots": None, "scenarios": {}}
    async with Sandbox(slots=slots) as sb:
        out["slots"] = sb.slots
        out["isolation"] = {k: v for k, v in sb.isolation.items() if k in ("network", "mounts", "seccomp", "uid_drop")}
        await sb.run_batch([ExecRequest(TRIVIAL)] * 32 + [ExecRequest(SYMPY)] * 4)  # warm
        sc = out["scenarios"]

        async def ours(code, timeout=None):
            return (await sb.run(code, timeout_s=timeout)).status

        for conc, n_ours, n_naive in ((1, n(200), n(40)), (64, n(2000), n(300)), (512, n(4000), n(600))):
            o = await _capped([TRIVIAL] * n_ours, conc, ours)
            b = await _capped([TRIVIAL] * n_naive, conc, naive_run)
            sc[f"trivial_c{conc}"] = _compare(o, b)

        for conc, n_ours, n_naive in ((16, n(200), n(32)), (64, n(400), n(64))):
            # the naive sympy calls get 60 s each (a service would time them out too)
            o = await _capped([SYMPY] * n_ours, conc, ours)
            b = await _capped([SYMPY] * n_naive, conc, lambda c: naive_run(c, 60.0))
            sc[f"sympy_c{conc}"] = _compare(o, b)

        # 10-cell sessions, 64 sessions at once (cells of one session in order)
        n_sessions, n_naive_sessions = n(256), n(32)

        async def session_ours(i):
            for c in SESSION_CELLS:
                r = await sb.run(c, session_id=f"bench-{i}")
                if not r.ok:
                    return r.status
            await sb.close_session(f"bench-{i}")
            return "ok"

        async def session_naive(i):
            for k in range(len(SESSION_CELLS)):
                st = await naive_run(_naive_cell(SESSION_CELLS, k))
                if st != "ok":
                    return st
            return "ok"

        o = await _capped(range(n_sessions), 64, session_ours)
        b = await _capped(range(n_naive_sessions), 64, session_naive)
        cells = len(SESSION_CELLS)
        sc["session_10_cells_c64"] = _compare(
            o, b, ours_cells_per_s=round(o["per_s"] * cells, 1),
            naive_replay_cells_per_s=round(b["per_s"] * cells, 1))

        # steady state: 64 live sessions, 20 cells each (no session start in the clock)
        await asyncio.gather(*(sb.run("acc = []", session_id=f"steady-{i}") for i in range(64)))
        cells_each = max(5, int(20 * scale))

        async def steady(i):
            for k in range(cells_each):
                r = await sb.run(f"acc.append({k})\nlen(acc)", session_id=f"steady-{i}")
                if not r.ok:
                    return r.status
            return "ok"

        o = await _capped(range(64), 64, steady)
        sc["session_steady_c64"] = {"cells": 64 * cells_each,
                                    "cells_per_s": round(o["per_s"] * cells_each, 1),
                                    "statuses": o["statuses"]}
        for i in range(64):
            await sb.close_session(f"steady-{i}")

        # mix: 90% trivial, 5% sympy, 5% spinning until a 1 s timeout
        def mix(m: int) -> list[tuple[str, float | None]]:
            items = []
            for i in range(m):
                items.append((SPIN, 1.0) if i % 20 == 0 else (SYMPY, None) if i % 20 == 1 else (TRIVIAL, None))
            return items

        o = await _capped(mix(n(1000)), 64, lambda it: ours(it[0], it[1]))
        b = await _capped(mix(n(200)), 64, lambda it: naive_run(it[0], it[1] or 60.0))
        sc["mix_timeouts_c64"] = _compare(o, b)

        # the same trivial calls over HTTP: SandboxClient micro-batches them onto /v1/execute/batch
        import socket

        from tirl.sandbox.client import SandboxClient
        from tirl.sandbox.http import serve

        with socket.socket() as s_:
            s_.bind(("127.0.0.1", 0))
            port = s_.getsockname()[1]
        runner = await serve(sb, "127.0.0.1", port)
        try:
            async with SandboxClient(f"http://127.0.0.1:{port}") as client:
                async def via_http(code):
                    return (await client.run(code)).status

                await _capped([TRIVIAL] * 32, 64, via_http)
                o = await _capped([TRIVIAL] * n(2000), 64, via_http)
        finally:
            await runner.cleanup()
        sc["trivial_c64_over_http"] = {"ours": o, "vs_in_process": round(
            o["per_s"] / sc["trivial_c64"]["ours"]["per_s"], 2)}

        t0 = time.monotonic()
        res = await sb.run_batch([ExecRequest(TRIVIAL)] * 4096)
        wall = time.monotonic() - t0
        sc["burst_4096"] = {"answered": len(res), "ok": sum(r.ok for r in res),
                            "statuses": sorted({r.status for r in res}), "wall_s": round(wall, 2),
                            "per_s": round(len(res) / wall, 1),
                            "max_queue_ms": round(max(r.queue_ms for r in res), 1)}
    out["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quarter-size runs")
    ap.add_argument("--slots", type=int, default=0, help="sandbox slots (0 = default)")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(bench(args.quick, args.slots)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
