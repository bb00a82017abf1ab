"""`tirl demo` and `tirl train`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small model from scratch on CPU and show it learning to use Python")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. run.seed=1")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="run a training recipe (SFT + GRPO-RoC stages) from a TOML config")
    p.add_argument("config", help="a TOML file or a recipe name from configs/ (demo, smollm2-135m, rstar2-14b)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rl.lr=1e-6")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_train)


def _resolve(config: str, overrides: list[str], print_config: bool):
    from tirl.config import config_to_toml, load_config

    cfg = load_config(config, overrides)
    if print_config:
        print(config_to_toml(cfg), end="")
    return cfg


def _run(cfg) -> int:
    import time

    from tirl.rl.trainer import train

    t0 = time.perf_counter()
    result = train(cfg)
    evals = result.get("evals", [])
    lines = [f"{e['label']}: held-out accuracy {100 * e['held_out_acc']:.1f}%" for e in evals]
    print("\n".join(lines))
    print(f"done in {time.perf_counter() - t0:.0f} s; report: {cfg.run.output_dir}/{cfg.run.name}/report.md")
    return 0


def _demo(args: argparse.Namespace) -> int:
    cfg = _resolve("demo", args.overrides, args.print_config)
    if args.print_config:
        return 0
    return _run(cfg)


def _train(args: argparse.Namespace) -> int:
    cfg = _resolve(args.config, args.overrides, args.print_config)
    if args.print_config:
        return 0
    return _run(cfg)
