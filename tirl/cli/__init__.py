"""The ``tirl`` command: one module per command in this package, all of one style::

    tirl CMD [CONFIG] [section.key=value ...] [--flags]

``CONFIG`` is a TOML file or a recipe name from ``configs/``; ``section.key=value`` items
override it (validated like the file); flags such as ``--model`` or ``--port`` are sugar
that become such overrides. ``--print-config`` prints the resolved config with every
setting's description and exits. The parts of tirl are libraries: nothing below this
package imports it. Each command module exposes ``register(subparsers)``; its handler
imports the heavy machinery when it runs, so ``tirl --help`` stays fast, and returns the
process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# the order is the order of `tirl --help`
COMMAND_MODULES = [
    "tirl.cli.train",  # demo, train
    "tirl.cli.eval",  # eval
    "tirl.cli.plan",  # plan
    "tirl.cli.view",  # view
    "tirl.cli.analyze",  # analyze
    "tirl.cli.grade",  # grade
    "tirl.cli.serve",  # serve
    "tirl.cli.chat",  # chat
    "tirl.cli.sandbox",  # sandbox serve | worker
    "tirl.cli.dispatch",  # dispatch simulate
    "tirl.cli.doctor",  # doctor
]


def build_parser() -> argparse.ArgumentParser:
    from tirl import __version__

    parser = argparse.ArgumentParser(
        prog="tirl",
        description="tirl: train and evaluate language models that solve math by reasoning "
        "and running Python (rStar2-Agent's GRPO-RoC). Every command: tirl CMD [CONFIG] "
        "[section.key=value ...].",
    )
    parser.add_argument("--version", action="version", version=f"tirl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from tirl.config import ConfigError

    if len(argv) >= 2 and argv[0] == "eval" and argv[1] in ("compare", "report"):
        from tirl.cli.eval import SUBCOMMANDS  # their own arguments: run directories

        func = lambda _: SUBCOMMANDS[argv[1]](argv[2:])  # noqa: E731
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0 if args.command is None else 2
        func = args.func
    try:
        return int(func(args if "args" in locals() else None) or 0)
    except ConfigError as err:
        print(f"tirl: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tirl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
