"""`tirl eval`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on math benchmarks: avg@k, pass@k, maj@k")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from tirl.cli import NotBuilt

    raise NotBuilt("`tirl eval` (the evaluation harness)", 7)
