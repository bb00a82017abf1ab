"""`tirl view`: a local web app over a training run or an eval output."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="browse a run or eval output in the browser: metrics, trajectories, groups",
                       description="Serve a local web app (loopback by default) over a training run "
                       "directory or a `tirl eval` output: metric charts, the config and report, a "
                       "trajectory browser with filters and search, a problem's whole group, and the same "
                       "problem across two runs (--compare). See docs/view.md.")
    p.add_argument("path", metavar="RUN_DIR_OR_EVAL_DIR")
    p.add_argument("--compare", metavar="OTHER_DIR", help="a second run or eval output to compare with")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port, printed)")
    p.add_argument("--tokenizer", help="tokenizer.json or model directory for token-level colouring "
                   "(default: the run's newest checkpoint)")
    p.set_defaults(func=_view)


def _view(args: argparse.Namespace) -> int:
    from tirl.view import run_view

    return run_view(args.path, args.host, args.port, args.compare, args.tokenizer)
