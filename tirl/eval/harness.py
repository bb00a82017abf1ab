"""The evaluation run: benchmarks → samples → graded records → report, resumable.

:func:`evaluate` is what ``tirl eval`` runs. For each benchmark it loads the problems
(``tirl.data.benchmarks``), samples k trajectories per problem through the same
:class:`~tirl.agent.loop.AgentLoop` as training (:func:`tirl.eval.runner.run_benchmark`),
grades them with :class:`tirl.reward.Grader`, and writes into the output directory::

    config.toml            the resolved configuration
    eval_settings.json     the settings that samples depend on (checked on resume)
    samples/<bench>.jsonl  one graded sample per line, appended as it finishes
    trajectories/<bench>.jsonl   full trajectories (only with eval.save_trajectories)
    report.json, report.md, plots/accuracy.png, plots/response_length.png

A rerun with the same output directory reuses every finished sample; if a setting that
changes samples (model, temperature, top-p, turn or token limits, prompt format) differs
from the saved one it stops with :class:`SettingsMismatch` instead of mixing them
(``fresh=True`` discards the old samples). k and the problem limit may change freely.

The engine, tokenizer, tools and grader come from the one builder, :func:`tirl.stack.open_stack`
(phase ``eval``): an OpenAI-compatible server (``tirl serve``, vLLM, SGLang, llama.cpp) when
``model.base_url`` is set, several behind the dispatcher with ``[dispatch] engines``, else an
in-process model. Sampling is the evaluation's (``[sampling]`` with ``[eval] sampling``).
Tests inject their own ``loop`` and ``grader`` instead.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tirl.config import Config, config_to_toml, resolve_sampling
from tirl.data.benchmarks import benchmark_name, load_problems
from tirl.eval.report import (BenchmarkSummary, protocol_warnings, sample_warnings, summarize,
                              write_report)
from tirl.eval.runner import BenchmarkRun, run_benchmark
from tirl.eval.samples import SampleRecord, SampleStore

# settings that change what a sample is: a resume with any of these different is refused
FINGERPRINT_KEYS = ("model", "temperature", "top_p", "top_k", "max_turns", "max_tokens",
                    "format", "stateful_tool", "tool_response_max_chars")


class SettingsMismatch(ValueError):
    """The output directory holds samples made with different settings."""


@dataclass
class EvalResult:
    out_dir: Path
    summaries: list[BenchmarkSummary]
    runs: dict[str, BenchmarkRun] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def eval_settings(cfg: Config, model_label: str | None = None) -> dict[str, Any]:
    """The settings a report states and a resume checks, from the config."""
    e, a, m, sp = cfg.eval, cfg.agent, cfg.model, resolve_sampling(cfg, "eval")
    return {
        "model": model_label or m.served_name or m.path,
        "base_url": m.base_url or (", ".join(cfg.dispatch.engines) or None),
        "k": e.k,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "top_k": sp.top_k,
        "max_turns": sp.max_turns,
        "max_tokens": sp.max_tokens,
        "format": a.format,
        "stateful_tool": a.stateful_tool,
        "tool_response_max_chars": a.tool_response_max_chars,
        "concurrency": e.concurrency,
        "seed": cfg.run.seed,
        "bootstrap_samples": e.bootstrap_samples,
        "limit": e.limit,
        "benchmarks": list(e.benchmarks),
        "data_dir": cfg.data.data_dir,
    }


def check_settings(out_dir: Path, settings: dict[str, Any], fresh: bool) -> None:
    """Refuse to mix samples made under different settings; write the settings file."""
    path = out_dir / "eval_settings.json"
    samples = out_dir / "samples"
    if fresh and samples.exists():
        shutil.rmtree(samples)
        if (out_dir / "trajectories").exists():
            shutil.rmtree(out_dir / "trajectories")
    if path.exists() and samples.exists() and any(samples.glob("*.jsonl")):
        old = json.loads(path.read_text())
        diff = [f"{k}: saved {old.get(k)!r}, now {settings.get(k)!r}"
                for k in FINGERPRINT_KEYS if old.get(k) != settings.get(k)]
        if diff:
            raise SettingsMismatch(
                f"{out_dir} holds samples made with other settings ({'; '.join(diff)}). "
                "Use another output directory (--output / run.name), or --fresh to discard them."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: settings.get(k) for k in FINGERPRINT_KEYS}, indent=1) + "\n")


def warn_loudly(message: str) -> None:
    """A red panel on stderr (and a plain line when stderr is not a terminal)."""
    try:
        from rich.console import Console
        from rich.panel import Panel

        Console(stderr=True).print(Panel(message, title="WARNING", style="bold red"))
    except Exception:  # noqa: BLE001 - a warning must never be lost to a display problem
        print(f"WARNING: {message}", file=sys.stderr)


def load_benchmark(cfg: Config, name_or_path: str) -> list[dict]:
    return load_problems(name_or_path, data_dir=cfg.data.data_dir, problem_field=cfg.data.problem_field,
                         answer_field=cfg.data.answer_field, limit=cfg.eval.limit)


async def evaluate(
    cfg: Config,
    out_dir: str | Path | None = None,
    *,
    loop: Any = None,
    grader: Any = None,
    fresh: bool = False,
    progress: bool = True,
    model_label: str | None = None,
) -> EvalResult:
    """Run ``cfg.eval.benchmarks`` and write the report (see the module docstring).

    Without ``loop``/``grader`` they are built from ``cfg`` (and closed at the end).
    """
    out = Path(out_dir) if out_dir is not None else Path(cfg.run.output_dir) / cfg.run.name
    settings = eval_settings(cfg, model_label)
    warnings = protocol_warnings(settings)
    for w in warnings:
        warn_loudly(w)
    # load every benchmark before any sampling: a typo fails in a second, not after an hour
    names = [benchmark_name(b) for b in cfg.eval.benchmarks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        from tirl.data.benchmarks import BenchmarkError

        raise BenchmarkError(
            f"benchmark name(s) {', '.join(dup)} given twice (files are named by their stem, "
            "and samples/<name>.jsonl must be unique): drop the repeat or rename one file"
        )
    problems = {name: load_benchmark(cfg, b) for name, b in zip(names, cfg.eval.benchmarks)}
    check_settings(out, settings, fresh)
    (out / "config.toml").write_text(config_to_toml(cfg))

    if loop is not None and grader is not None:
        runs = await _run_all(cfg, out, problems, loop, grader, progress)
    else:
        from tirl.stack import open_stack

        async with open_stack(cfg, "eval", grader=grader) as st:
            runs = await _run_all(cfg, out, problems, loop or st.loop(), st.grader, progress)

    summaries = [summarize(name, r.records, cfg.eval.k, cfg.eval.bootstrap_samples, cfg.run.seed)
                 for name, r in runs.items()]
    settings["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for w in sample_warnings(summaries, settings):
        warn_loudly(w)
        warnings.append(w)
    paths = write_report(out, summaries, settings, {n: r.records for n, r in runs.items()}, warnings)
    return EvalResult(out, summaries, runs, warnings, paths)


async def _run_all(cfg: Config, out: Path, problems: dict[str, list[dict]], loop: Any, grader: Any,
                   progress: bool) -> dict[str, BenchmarkRun]:
    """All benchmarks at once under one concurrency limit (no idle tail between benchmarks),
    one progress bar whose status shows each benchmark's running accuracy."""
    from tirl.runs import progress_bar

    k = cfg.eval.k
    total = sum(len(p) for p in problems.values()) * k
    sem = asyncio.Semaphore(cfg.eval.concurrency)
    seen = {name: [0, 0] for name in problems}  # samples, correct
    traj_files: dict[str, Any] = {}
    if cfg.eval.save_trajectories:
        (out / "trajectories").mkdir(parents=True, exist_ok=True)
        traj_files = {name: (out / "trajectories" / f"{name}.jsonl").open("a", encoding="utf-8", buffering=1)
                      for name in problems}
    label = ", ".join(problems) if len(problems) <= 3 else f"{len(problems)} benchmarks"
    with progress_bar(total, f"eval {label}", enabled=progress) as bar:
        def on_sample_for(name: str):
            def on_sample(rec: SampleRecord, reused: bool) -> None:
                seen[name][0] += 1
                seen[name][1] += rec.correct
                bar.status(" · ".join(f"{n} {100 * c / s:.1f}% ({s})" for n, (s, c) in seen.items() if s))
                bar.advance(1)
            return on_sample

        def on_traj_for(name: str):
            f = traj_files.get(name)
            return (lambda traj: f.write(json.dumps(traj.to_dict()) + "\n")) if f is not None else None

        tasks = {name: asyncio.create_task(run_benchmark(
            name, probs, loop, grader, SampleStore(out / "samples" / f"{name}.jsonl"), k,
            keep_text=cfg.eval.save_text, seed=cfg.run.seed,
            on_sample=on_sample_for(name), on_trajectory=on_traj_for(name), semaphore=sem,
        )) for name, probs in problems.items()}
        try:
            await asyncio.gather(*tasks.values())
        finally:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            for f in traj_files.values():
                f.close()
    return {name: t.result() for name, t in tasks.items()}


def rebuild_report(out_dir: str | Path, k: int | None = None, n_boot: int | None = None,
                   seed: int | None = None) -> EvalResult:
    """Recompute report.* from the samples of a run directory (no sampling)."""
    from tirl.eval.report import read_report

    out = Path(out_dir)
    try:
        old = read_report(out)
        settings = old.get("settings", {})
    except FileNotFoundError:
        settings = json.loads((out / "eval_settings.json").read_text()) if (out / "eval_settings.json").exists() else {}
    k = k or settings.get("k")
    files = sorted((out / "samples").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{out}/samples/ holds no samples; is {out} a `tirl eval` output directory?")
    records = {f.stem: list(SampleStore(f).load().values()) for f in files}
    if k is None:
        k = max(r.sample for rs in records.values() for r in rs) + 1
    n_boot = settings.get("bootstrap_samples", 1000) if n_boot is None else n_boot
    seed = settings.get("seed", 0) if seed is None else seed
    settings.update({"k": k, "bootstrap_samples": n_boot, "seed": seed})
    summaries = [summarize(name, rs, k, n_boot, seed) for name, rs in records.items()]
    warnings = protocol_warnings(settings) + sample_warnings(summaries, settings)
    paths = write_report(out, summaries, settings, records, warnings)
    return EvalResult(out, summaries, {}, warnings, paths)
