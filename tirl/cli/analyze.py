"""`tirl analyze`: what the model does with the tool, from saved trajectories or samples."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="tool use, error recovery and the paper's entropy analysis "
                       "(forking vs reflection tokens) of a run or eval output",
                       description="Read a training run's trajectories/ (or an eval output's "
                       "trajectories/ or samples/, or one .jsonl) and write a markdown report with "
                       "PNGs: tool calls, error kinds, recovery rate, turns to answer over training, and "
                       "the top 20%% highest-entropy tokens split into forking and reflection tokens. "
                       "Entropy is exact with --model (recomputed in chunks), else approximate. "
                       "See docs/analysis.md.")
    p.add_argument("path", metavar="RUN_OR_SAMPLES")
    p.add_argument("--model", help="checkpoint to recompute exact token entropy with (chunked); "
                   "without it entropy is estimated from the saved log-probs")
    p.add_argument("-o", "--output", help="output directory (default: <path>/analysis)")
    p.add_argument("--top-frac", type=float, default=0.2, help="share of highest-entropy tokens (default 0.2)")
    p.add_argument("--reflection-window", type=int, default=16,
                   help="tokens after a tool response that count as reflection (default 16)")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from tirl.analysis import run_analyze

    return run_analyze(args.path, model=args.model, out=args.output, top_frac=args.top_frac,
                       reflection_window=args.reflection_window)
