"""Benchmark of the Redis sandbox fleet against the in-process pool, measured in the same run.

Scenarios (same machine, same total slots):

* ``trivial_64`` — trivial code at 64 in flight: in-process ``Sandbox(slots=S)`` vs the
  fleet (``RedisBackend`` + 2 worker processes with S/2 slots each, real sandbox);
* ``http_trivial_64`` — the same over HTTP as a trainer sees it: ``SandboxClient`` to
  ``tirl sandbox serve`` (local pool) vs to ``tirl sandbox serve --redis`` + 2 workers;
* ``sympy_16`` — a sympy snippet at 16 in flight, same pair;
* ``plumbing`` — the fleet with no-op workers (no code runs): what the gateway, Redis and
  the workers' own loops cost per call, the most calls/s this box can move (512 and 64 in
  flight) and the bare transit latency (1 in flight).
* ``--burst N`` (alone; long) — the paper's headline load at our scale: N trivial calls sent
  at once through the fleet (an in-process ``RedisBackend`` gateway + 2 real workers with
  S/2 slots each), twice, each time on a fresh Redis and fresh workers: with the gateway's
  default 60 s queue deadline (the baseline), and wrapped in
  ``RetryingExecutor(budget_s=--burst-budget)`` so the queue deadline follows the caller's
  budget. For each: calls/s, p50/p99 latency, outcomes (status/reason), answers lost or
  wrong, peak RSS of the gateway process and of redis-server, Redis's own memory peak.

For each run it reports throughput, mean/p50/p99 latency (submit → result) and the CPU
time spent per call by each component (this process = the gateway or the in-process pool;
the workers with their zygotes and children; redis-server), read from /proc. The ratio
``fleet / inproc`` of per-call wall time at 64 in flight is the overhead the issue targets
(≤ 1.5×). docs/fleet.md turns the per-call CPU costs into a capacity model.

    .venv/bin/python benchmarks/fleet_bench.py [--quick] [--slots S] [--repeat R]
    .venv/bin/python benchmarks/fleet_bench.py --burst 45000 [--slots 8] [--burst-budget 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tirl.sandbox.types import ExecResult  # noqa: E402

TRIVIAL = "x = sum(range(100))\nprint(x * 2)"
SYMPY = ("import sympy as sp\nx = sp.Symbol('x')\n"
         "print(sp.integrate(sp.sin(x)**2, x), sp.factor(x**4 - 1), sp.solve(x**2 - 2, x))")
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes and CPU time
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds incl. reaped children) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        ppid = int(fields[1])
        cpu = sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime
        out[int(d)] = (ppid, cpu)
    return out


def tree_cpu(roots: list[int], *, exclude: set[int] = frozenset()) -> float:
    """CPU seconds of the given processes and all their live descendants."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    total, stack, seen = 0.0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid in exclude or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        stack.extend(kids.get(pid, []))
    return total


class Redis:
    def __init__(self):
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="fleet-bench-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def close(self):
        self.proc.kill()
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def spawn_workers(url: str, n: int, slots: int, noop: bool) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        cmd = ([sys.executable, __file__, "--noop-worker", url, str(slots), f"noop{i}"] if noop else
               [sys.executable, "-m", "tirl.cli", "sandbox", "worker", "--redis", url,
                "--slots", str(slots)])
        procs.append(subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


# ------------------------------------------------------------------ measuring
def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def measure(executor, code: str, n: int, conc: int,
                  cpu_roots: dict[str, tuple[list[int], set[int]]]) -> dict:
    """``cpu_roots``: component -> (root pids, pids to leave out of its process tree)."""
    sem = asyncio.Semaphore(conc)
    lat: list[float] = []
    statuses: dict[str, int] = {}

    async def one():
        async with sem:
            t = time.perf_counter()
            r: ExecResult = await executor.run(code)
            lat.append((time.perf_counter() - t) * 1000)
            statuses[r.status] = statuses.get(r.status, 0) + 1

    before = {k: tree_cpu(r, exclude=x) for k, (r, x) in cpu_roots.items()}
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    wall = time.perf_counter() - t0
    cpu = {k: (tree_cpu(r, exclude=x) - before[k]) * 1000 / n for k, (r, x) in cpu_roots.items()}
    return {"n": n, "in_flight": conc, "per_s": round(n / wall, 1),
            "wall_ms_per_call": round(wall * 1000 / n, 3),
            "mean_ms": round(sum(lat) / len(lat), 2), "p50_ms": round(_pct(lat, 0.5), 2),
            "p99_ms": round(_pct(lat, 0.99), 2),
            "cpu_ms_per_call": {k: round(v, 3) for k, v in cpu.items()},
            "statuses": statuses}


async def wait_workers(gw, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await gw.health()
        if h.get("workers", 0) >= n:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{n} workers did not register: {h}")


async def bench_pair(redis: Redis, slots: int, code: str, n: int, conc: int, repeat: int,
                     warm: int) -> dict:
    from tirl.sandbox.fleet import RedisBackend
    from tirl.sandbox.pool import Sandbox

    me = os.getpid()
    out: dict = {"inproc": [], "fleet": []}
    sb = Sandbox(slots=slots)
    await sb.start()
    try:
        workers = spawn_workers(redis.url, 2, max(1, slots // 2), noop=False)
        try:
            async with RedisBackend(redis.url) as gw:
                await wait_workers(gw, 2)
                for _ in range(warm):
                    await asyncio.gather(*(gw.run(code) for _ in range(conc)))
                    await asyncio.gather(*(sb.run(code) for _ in range(conc)))
                worker_pids = [p.pid for p in workers]
                sb_pids = set(sb.isolation.get("pids", {}).values())
                others = set(worker_pids) | {redis.proc.pid}
                rd = ([redis.proc.pid], set())
                for _ in range(repeat):  # interleaved, so load from others hits both alike
                    out["inproc"].append(await measure(
                        sb, code, n, conc, {"pool": ([me], others), "redis": rd}))
                    out["fleet"].append(await measure(
                        gw, code, n, conc, {"gateway": ([me], others | sb_pids),
                                            "workers": (worker_pids, set()), "redis": rd}))
        finally:
            stop_workers(workers)
    finally:
        await sb.close()
    ratios = [f["wall_ms_per_call"] / i["wall_ms_per_call"]
              for i, f in zip(out["inproc"], out["fleet"])]
    out["overhead_ratio"] = [round(r, 3) for r in ratios]
    return out


async def bench_plumbing(redis: Redis, n: int, conc: int) -> dict:
    from tirl.sandbox.fleet import RedisBackend

    workers = spawn_workers(redis.url, 2, 64, noop=True)
    try:
        async with RedisBackend(redis.url) as gw:
            await wait_workers(gw, 2)
            await asyncio.gather(*(gw.run("x") for _ in range(conc)))
            pids = [p.pid for p in workers]
            return await measure(gw, "x", n, conc, {
                "gateway": ([os.getpid()], set(pids) | {redis.proc.pid}),
                "workers": (pids, set()), "redis": ([redis.proc.pid], set())})
    finally:
        stop_workers(workers)


async def _wait_http(url: str, timeout: float = 120) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy")


async def bench_http(redis: Redis, slots: int, code: str, n: int, conc: int, repeat: int) -> dict:
    """Over HTTP, as a trainer sees it: SandboxClient -> `tirl sandbox serve` (local pool)
    vs SandboxClient -> `tirl sandbox serve --redis` (gateway) + 2 workers."""
    from tirl.sandbox.client import SandboxClient

    p_local, p_gw = _free_port(), _free_port()
    local = subprocess.Popen([sys.executable, "-m", "tirl.cli", "sandbox", "serve", "--port",
                              str(p_local), "--slots", str(slots)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen([sys.executable, "-m", "tirl.cli", "sandbox", "serve", "--port",
                           str(p_gw), "--redis", redis.url], start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = spawn_workers(redis.url, 2, max(1, slots // 2), noop=False)
    out: dict = {"local_serve": [], "fleet_serve": []}
    try:
        u_local, u_gw = f"http://127.0.0.1:{p_local}", f"http://127.0.0.1:{p_gw}"
        await _wait_http(u_local)
        await _wait_http(u_gw)
        wp = [p.pid for p in workers]
        rd = ([redis.proc.pid], set())
        async with SandboxClient(u_local) as cl, SandboxClient(u_gw) as cg:
            for c in (cl, cg):
                await asyncio.gather(*(c.run(code) for _ in range(conc)))
            for _ in range(repeat):
                out["local_serve"].append(await measure(cl, code, n, conc, {
                    "client": ([os.getpid()], {local.pid, gw.pid, redis.proc.pid, *wp}),
                    "server": ([local.pid], set()), "redis": rd}))
                out["fleet_serve"].append(await measure(cg, code, n, conc, {
                    "client": ([os.getpid()], {local.pid, gw.pid, redis.proc.pid, *wp}),
                    "gateway": ([gw.pid], set()), "workers": (wp, set()), "redis": rd}))
    finally:
        stop_workers(workers + [local, gw])
    out["overhead_ratio"] = [round(f["wall_ms_per_call"] / i["wall_ms_per_call"], 3)
                             for i, f in zip(out["local_serve"], out["fleet_serve"])]
    return out


def capacity_from(res: dict, calls: int = 45_000, latency_s: float = 0.3,
                  sympy_share: float = 0.2, cores_per_node: int = 16) -> dict:
    """docs/fleet.md's model fed with this run's measured per-call CPU costs."""
    from statistics import median

    from tirl.sandbox.fleet.capacity import plan

    triv = median(x["cpu_ms_per_call"]["workers"] for x in res["trivial_64"]["fleet"])
    sym = median(x["cpu_ms_per_call"]["workers"] for x in res["sympy_16"]["fleet"])
    gw = res["plumbing_noop_512"]["cpu_ms_per_call"]["gateway"]
    rd = res["plumbing_noop_512"]["cpu_ms_per_call"]["redis"]
    mix = (1 - sympy_share) * triv + sympy_share * sym
    out = {"inputs": {"worker_cpu_ms_trivial": triv, "worker_cpu_ms_sympy": sym,
                      "sympy_share": sympy_share, "worker_cpu_ms_mix": round(mix, 3),
                      "gateway_cpu_ms": gw, "redis_cpu_ms": rd, "calls": calls,
                      "latency_s": latency_s, "cores_per_node": cores_per_node}}
    for name, window in (("burst", 0.0), ("steady_30s", 30.0), ("steady_120s", 120.0),
                         ("steady_600s", 600.0)):
        p = plan(calls, latency_s, mix, exec_s=sym / 1000, window_s=window,
                 cores_per_node=cores_per_node, gateway_cpu_ms=gw, redis_cpu_ms=rd)
        out[name] = {"calls_per_s": round(p.calls_per_s), "worker_cores": round(p.worker_cores, 1),
                     "worker_nodes": p.worker_nodes, "gateway_cores": round(p.gateway_cores, 1),
                     "redis_instances": p.redis_instances}
    return out


# ------------------------------------------------------------------ no-op worker mode
class _Noop:
    async def run(self, code, stdin="", timeout_s=None, session_id=None):
        return ExecResult(status="ok", stdout=code, exit_code=0)

    async def close_session(self, sid):
        return False


def _noop_worker(url: str, slots: int, wid: str) -> None:
    from tirl.sandbox.fleet import FleetWorker

    async def main():
        w = FleetWorker(url, slots, executor=_Noop(), worker_id=wid)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, w.stop)
        await w.run()

    asyncio.run(main())


# ------------------------------------------------------------------ the 45K burst
def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def burst_client(url: str, n: int, budget_s: float) -> dict:
    """Runs in its own process (so its peak RSS is the gateway's): n calls at once through
    a RedisBackend; ``budget_s`` > 0 wraps it in RetryingExecutor(budget_s)."""
    from tirl.sandbox.fleet import RedisBackend
    from tirl.sandbox.retry import RetryingExecutor

    async with RedisBackend(url) as gw:
        await wait_workers(gw, 2)
        ex = RetryingExecutor(gw, budget_s=budget_s) if budget_s > 0 else gw
        rss_before = peak_rss_mb(os.getpid())
        lat: list[float] = []
        outcomes: dict[str, int] = {}
        wrong = attempts_gt1 = 0

        async def one(i: int) -> None:
            nonlocal wrong, attempts_gt1
            t = time.perf_counter()
            r: ExecResult = await ex.run(f"print({i} * 2)")
            lat.append((time.perf_counter() - t) * 1000)
            key = r.status if r.status != "infra_error" else f"infra_error/{r.reason}"
            outcomes[key] = outcomes.get(key, 0) + 1
            if r.status == "ok" and r.stdout != f"{2 * i}\n":
                wrong += 1
            if r.extra.get("attempts", 1) > 1:
                attempts_gt1 += 1

        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
        raised = sum(1 for x in res if isinstance(x, BaseException))
        return {"n": n, "budget_s": budget_s or None, "wall_s": round(wall, 1),
                "calls_per_s": round(n / wall, 1), "p50_ms": round(_pct(lat, 0.5), 1),
                "p99_ms": round(_pct(lat, 0.99), 1), "max_ms": round(max(lat), 1),
                "outcomes": dict(sorted(outcomes.items())), "lost_or_raised": raised,
                "answered": len(lat), "wrong_output": wrong, "retried_calls": attempts_gt1,
                "retries": getattr(ex, "retries", 0),
                "gateway_rss_mb_before": rss_before, "gateway_peak_rss_mb": peak_rss_mb(os.getpid()),
                "gateway_stats": {"by_reason": gw.stats.by_reason,
                                  "duplicates_dropped": gw.stats.duplicates_dropped}}


async def bench_burst(n: int, slots: int, budget_s: float) -> dict:
    import redis.asyncio as aioredis

    out: dict = {}
    for name, budget in (("gateway_default_queue_deadline_60s", 0.0),
                         (f"caller_budget_{budget_s:g}s_with_retry", budget_s)):
        redis = Redis()
        workers = spawn_workers(redis.url, 2, max(1, slots // 2), noop=False)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--burst-client", redis.url, str(n), str(budget),
                stdout=asyncio.subprocess.PIPE)
            stdout, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"burst client ({name}) exited {proc.returncode}")
            r = json.loads(stdout)
            r["redis_peak_rss_mb"] = peak_rss_mb(redis.proc.pid)
            cli = aioredis.Redis.from_url(redis.url)
            mem = await cli.info("memory")
            await cli.aclose()
            r["redis_used_memory_peak_mb"] = round(mem["used_memory_peak"] / 2**20, 1)
            out[name] = r
        finally:
            stop_workers(workers)
            redis.close()
    base, fix = out.values()
    qt = "infra_error/queue_timeout"
    out["queue_timeout_share"] = {k: round(v["outcomes"].get(qt, 0) / v["n"], 4)
                                  for k, v in list(out.items())[:2]}
    out["wall_ratio_budget_vs_default"] = round(fix["wall_s"] / base["wall_s"], 3)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--slots", type=int, default=0, help="total slots (0 = the sandbox default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--burst", type=int, default=0, metavar="N",
                    help="run only the burst: N calls at once, default deadline vs caller budget")
    ap.add_argument("--burst-budget", type=float, default=600.0,
                    help="the caller's budget (s) in the burst's second run")
    a = ap.parse_args()
    from tirl.sandbox.pool import default_slots

    slots = a.slots or default_slots()
    if a.burst:
        res = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
               "total_slots": slots, "workers": 2}
        res["burst"] = await bench_burst(a.burst, slots, a.burst_budget)
        res["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
        print(json.dumps(res, indent=1))
        return
    n_triv, n_sym, n_plumb = (600, 64, 4000) if a.quick else (2000, 160, 10000)
    redis = Redis()
    try:
        res = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
               "total_slots": slots}
        res["trivial_64"] = await bench_pair(redis, slots, TRIVIAL, n_triv, 64, a.repeat, 2)
        res["http_trivial_64"] = await bench_http(redis, slots, TRIVIAL, n_triv, 64, a.repeat)
        res["sympy_16"] = await bench_pair(redis, slots, SYMPY, n_sym, 16, max(1, a.repeat - 1), 1)
        res["plumbing_noop_512"] = await bench_plumbing(redis, n_plumb, 512)
        res["plumbing_noop_64"] = await bench_plumbing(redis, n_plumb // 2, 64)
        res["plumbing_noop_1"] = await bench_plumbing(redis, 300, 1)  # transit latency
        res["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
        res["capacity_model"] = capacity_from(res)
    finally:
        redis.close()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--noop-worker":
        _noop_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--burst-client":
        print(json.dumps(asyncio.run(burst_client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))))
    else:
        asyncio.run(main())
