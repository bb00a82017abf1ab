"""`tirl sandbox serve` and `tirl sandbox worker`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="the code-execution service: `serve` (HTTP) or `worker` (fleet node)")
    ss = p.add_subparsers(dest="sandbox_command", metavar="SANDBOX_COMMAND", required=True)
    s = ss.add_parser("serve", help="serve the sandbox over HTTP (a gateway to a fleet with --redis)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8900)
    s.add_argument("--slots", type=int, default=0, help="concurrent executions (0 = from the CPU count)")
    s.add_argument("--redis", default=None, help="redis://HOST:PORT/DB: act as a fleet gateway")
    s.set_defaults(func=_serve)
    w = ss.add_parser("worker", help="a fleet worker: take work from Redis, run it locally")
    w.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    w.add_argument("--slots", type=int, default=0)
    w.set_defaults(func=_worker)


def _serve(args: argparse.Namespace) -> int:
    from tirl.cli import NotBuilt

    raise NotBuilt("`tirl sandbox serve`", 3)


def _worker(args: argparse.Namespace) -> int:
    from tirl.cli import NotBuilt

    raise NotBuilt("`tirl sandbox worker` (the Redis fleet)", 9)
