"""`tirl dispatch simulate`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dispatch", help="rollout dispatch across engines: `simulate` compares policies")
    ss = p.add_subparsers(dest="dispatch_command", metavar="DISPATCH_COMMAND", required=True)
    s = ss.add_parser("simulate", help="simulate dispatch policies on a workload and compare them")
    s.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from tirl.cli import NotBuilt

    raise NotBuilt("`tirl dispatch simulate`", 8)
