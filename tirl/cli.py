"""The ``tirl`` command.

Each part of tirl registers its own subcommands from ``tirl/<part>/commands.py`` (a
``register(subparsers)`` function). Those modules import only argparse at the top, so
``tirl --help`` stays fast; handlers import the heavy machinery when they run.
A handler returns the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, registers) — the order is the order of `tirl --help`
COMMAND_MODULES = [
    "tirl.rl.commands",  # demo, train
    "tirl.eval.commands",  # eval
    "tirl.reward.commands",  # grade
    "tirl.engines.commands",  # serve
    "tirl.agent.commands",  # chat
    "tirl.sandbox.commands",  # sandbox serve | worker
    "tirl.dispatch.commands",  # dispatch simulate
    "tirl.doctor",  # doctor
]


class NotBuilt(SystemExit):
    """Raised by a subcommand whose part is not built yet: says so and exits 2."""

    def __init__(self, what: str, issue: int):
        print(f"tirl: {what} is not built yet (tracked in issue #{issue}); nothing was run.",
              file=sys.stderr)
        super().__init__(2)


def build_parser() -> argparse.ArgumentParser:
    from tirl import __version__

    parser = argparse.ArgumentParser(
        prog="tirl",
        description="tirl: train and evaluate language models that solve math by reasoning "
        "and running Python (rStar2-Agent's GRPO-RoC).",
    )
    parser.add_argument("--version", action="version", version=f"tirl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from tirl.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"tirl: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tirl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
