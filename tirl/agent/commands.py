"""`tirl chat`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat in the terminal with a model that runs Python as it reasons")
    p.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    from tirl.cli import NotBuilt

    raise NotBuilt("`tirl chat`", 5)
