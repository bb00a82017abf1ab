"""`tirl sandbox serve` and `tirl sandbox worker` (settings: ``[sandbox]``).

``serve`` runs an in-process :class:`~tirl.sandbox.pool.Sandbox` behind the HTTP API
(loopback by default). With ``sandbox.redis_url`` (``--redis URL``) it is a fleet gateway
instead: the backend is ``tirl.sandbox.fleet.RedisBackend`` and the same HTTP app serves it.
``worker`` runs ``tirl.sandbox.fleet.run_worker`` against that Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from tirl.cli.common import add_config_args, print_config, resolve_config, sugar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="the code-execution service: `serve` (HTTP) or `worker` (fleet node)")
    ss = p.add_subparsers(dest="sandbox_command", metavar="SANDBOX_COMMAND", required=True)
    s = ss.add_parser("serve", help="serve the sandbox over HTTP (a gateway to a fleet with --redis)")
    add_config_args(s)
    s.add_argument("--host", help="sandbox.host (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="sandbox.port (default 8900)")
    s.add_argument("--slots", type=int, help="concurrent executions, 0 = from the CPU count (sandbox.slots)")
    s.add_argument("--redis", help="redis://HOST:PORT/DB: act as a fleet gateway (sandbox.redis_url)")
    s.add_argument("--timeout", type=float, help="default wall-clock limit per call in s (sandbox.timeout_s)")
    s.add_argument("--memory-mb", type=int, help="address-space limit per call in MiB (sandbox.memory_mb)")
    s.set_defaults(func=_serve)
    w = ss.add_parser("worker", help="a fleet worker: take work from Redis, run it locally")
    add_config_args(w)
    w.add_argument("--redis", help="redis://HOST:PORT/DB (sandbox.redis_url)")
    w.add_argument("--slots", type=int, help="sandbox.slots")
    w.set_defaults(func=_worker)


def _config(args: argparse.Namespace, extra: list[tuple]):
    cfg, _ = resolve_config(args, sugar([(getattr(args, "redis", None), "sandbox.redis_url"),
                                         (args.slots, "sandbox.slots")] + extra))
    return cfg


def _serve(args: argparse.Namespace) -> int:
    cfg = _config(args, [(args.host, "sandbox.host"), (args.port, "sandbox.port"),
                         (args.timeout, "sandbox.timeout_s"), (args.memory_mb, "sandbox.memory_mb")])
    if args.print_config:
        return print_config(cfg)
    s = cfg.sandbox
    if s.redis_url:
        from tirl.sandbox.fleet import RedisBackend

        backend = RedisBackend(s.redis_url, default_timeout_s=s.timeout_s, queue_timeout_s=s.queue_timeout_s)
    else:
        from tirl.sandbox.pool import Sandbox

        backend = Sandbox(s)
    return asyncio.run(_serve_async(backend, s))


async def _serve_async(backend, s) -> int:
    from tirl.sandbox.http import serve

    await backend.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner = await serve(backend, s.host, s.port, s, header_timeout_s=s.header_timeout_s,
                             body_timeout_s=s.body_timeout_s)
    except OSError as err:
        await backend.close()
        print(f"tirl sandbox: cannot listen on {s.host}:{s.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    health = await backend.health()
    for w in health.get("warnings", []):
        print(f"tirl sandbox: WARNING: {w}", file=sys.stderr)
    print(f"tirl sandbox: serving on http://{s.host}:{s.port} "
          f"(slots {health.get('slots', '?')}); Ctrl-C to stop", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await backend.close()
    return 0


def _worker(args: argparse.Namespace) -> int:
    cfg = _config(args, [])
    if args.print_config:
        return print_config(cfg)
    if not cfg.sandbox.redis_url:
        print("tirl sandbox worker: give the fleet's Redis: --redis redis://HOST:PORT/DB", file=sys.stderr)
        return 2
    from tirl.sandbox.fleet import run_worker

    return int(run_worker(cfg.sandbox.redis_url, cfg.sandbox.slots) or 0)
