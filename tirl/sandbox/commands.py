"""`tirl sandbox serve` and `tirl sandbox worker`.

``serve`` runs an in-process :class:`~tirl.sandbox.pool.Sandbox` behind the HTTP API
(loopback by default). With ``--redis URL`` it is a fleet gateway instead: the backend is
``tirl.sandbox.fleet.RedisBackend(url)`` and the same HTTP app serves it. ``worker`` runs
``tirl.sandbox.fleet.run_worker(url, slots)``. The fleet (issue 9) is imported lazily.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="the code-execution service: `serve` (HTTP) or `worker` (fleet node)")
    ss = p.add_subparsers(dest="sandbox_command", metavar="SANDBOX_COMMAND", required=True)
    s = ss.add_parser("serve", help="serve the sandbox over HTTP (a gateway to a fleet with --redis)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8900)
    s.add_argument("--slots", type=int, default=0, help="concurrent executions (0 = from the CPU count)")
    s.add_argument("--redis", default=None, help="redis://HOST:PORT/DB: act as a fleet gateway")
    s.add_argument("--timeout", type=float, default=None, help="default wall-clock limit per call (s)")
    s.add_argument("--memory-mb", type=int, default=None, help="address-space limit per call (MiB)")
    s.set_defaults(func=_serve)
    w = ss.add_parser("worker", help="a fleet worker: take work from Redis, run it locally")
    w.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    w.add_argument("--slots", type=int, default=0)
    w.set_defaults(func=_worker)


def _fleet(what: str):
    from tirl.cli import NotBuilt

    try:
        import tirl.sandbox.fleet as fleet
    except ImportError:
        raise NotBuilt(what, 9) from None
    return fleet


def _serve(args: argparse.Namespace) -> int:
    from tirl.sandbox.config import SandboxConfig

    overrides = {"slots": args.slots}
    if args.timeout is not None:
        overrides["timeout_s"] = args.timeout
    if args.memory_mb is not None:
        overrides["memory_mb"] = args.memory_mb
    cfg = SandboxConfig(**overrides)
    if args.redis:
        fleet = _fleet("`tirl sandbox serve --redis` (the Redis fleet gateway)")
        backend = fleet.RedisBackend(args.redis, default_timeout_s=cfg.timeout_s)
    else:
        from tirl.sandbox.pool import Sandbox

        backend = Sandbox(cfg)
    return asyncio.run(_serve_async(backend, args.host, args.port, cfg))


async def _serve_async(backend, host: str, port: int, cfg) -> int:
    from tirl.sandbox.http import serve

    if hasattr(backend, "start"):
        await backend.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(backend, host, port, cfg)
    health = backend.health()
    if asyncio.iscoroutine(health):
        health = await health
    for w in health.get("warnings", []):
        print(f"tirl sandbox: WARNING: {w}", file=sys.stderr)
    print(f"tirl sandbox: serving on http://{host}:{port} "
          f"(slots {health.get('slots', '?')}); Ctrl-C to stop", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if hasattr(backend, "close"):
            await backend.close()
    return 0


def _worker(args: argparse.Namespace) -> int:
    fleet = _fleet("`tirl sandbox worker` (the Redis fleet)")
    return int(fleet.run_worker(args.redis, args.slots) or 0)
