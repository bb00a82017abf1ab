"""`tirl demo` and `tirl train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tirl.cli.common import add_config_args, print_config, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small model from scratch on CPU and show it learning to use Python",
                       description="The embedded default: configs/demo.toml plus your overrides.")
    add_config_args(p, positional="")
    p.add_argument("--force", action="store_true", help="resume even though the config changed (recorded)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="run a training recipe (SFT + GRPO-RoC stages) from a TOML config",
                       description="Run a recipe; rerun the same command to resume from the latest "
                       "checkpoint. Data parallel: torchrun --nproc_per_node N -m tirl.cli train CONFIG.")
    add_config_args(p, positional="CONFIG")
    p.add_argument("--force", action="store_true", help="resume even though the config changed (recorded)")
    p.set_defaults(func=_train)


def _run(args: argparse.Namespace, default: str | None) -> int:
    import time

    cfg, _ = resolve_config(args, ["run.allow_config_change=true"] if args.force else [],
                            default=default, config_required=True)
    if args.print_config:
        return print_config(cfg)
    from tirl.rl.trainer import train

    t0 = time.perf_counter()
    result = train(cfg)
    if result.get("rank", 0) != 0:  # under torchrun, rank 0 reports for all
        return 0
    for e in result.get("evals", []):
        print(f"{e['label']}: held-out accuracy {100 * e['held_out_acc']:.1f}%")
    root = Path(cfg.run.output_dir) / cfg.run.name
    _analyze_run(root)
    print(f"done in {time.perf_counter() - t0:.0f} s; report: {root / 'report.md'}")
    return 0


def _analyze_run(root: Path) -> None:
    """The run's own analysis (tool use, recovery, forking/reflection tokens), linked from
    its report; a failure here never fails the finished training."""
    import sys

    from tirl.analysis import analyze
    from tirl.analysis.load import latest_checkpoint_dir

    try:  # exact entropy from the final checkpoint (recomputed in chunks)
        report = analyze(root, root / "analysis", model=latest_checkpoint_dir(root))
    except Exception as err:  # noqa: BLE001 - the training result stands; say what went wrong
        print(f"tirl: the run's analysis failed ({type(err).__name__}: {err}); "
              f"run `tirl analyze {root}` to retry", file=sys.stderr)
        return
    with (root / "report.md").open("a") as f:
        f.write(f"\n## Analysis\n\nTool use, error recovery and the high-entropy token split of this run: "
                f"[{report.relative_to(root)}]({report.relative_to(root)}) (`tirl analyze {root}`).\n")


def _demo(args: argparse.Namespace) -> int:
    from tirl.cli.common import split_items
    from tirl.config import ConfigError

    pos, _ = split_items(args.items)
    if pos:
        raise ConfigError(f"tirl demo takes only section.key=value overrides, not {pos}; "
                          "for another config use tirl train CONFIG")
    return _run(args, "demo")


def _train(args: argparse.Namespace) -> int:
    return _run(args, None)
