"""`tirl serve`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from tirl.cli import NotBuilt

    raise NotBuilt("`tirl serve` (the local OpenAI-compatible server)", 5)
