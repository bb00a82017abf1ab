"""Summaries and reports of an evaluation: report.json, report.md and two PNGs.

:func:`summarize` turns one benchmark's sample records into a :class:`BenchmarkSummary`
(avg@k, pass@k at 1, 2, 4, … k, maj@k, each with a seeded bootstrap 95% interval over
problems; response lengths; tool use; finish reasons). :func:`write_report` writes::

    report.json             settings, warnings and every summary (machine-readable)
    report.md               one table per benchmark, intervals in brackets
    plots/accuracy.png      avg@k / maj@k / pass@k per benchmark with 95% error bars
    plots/response_length.png   response-length histograms, correct vs. incorrect

Problems with fewer than k saved samples (an interrupted run summarised as it is) are
scored on the samples they have, and the summary says how many are missing.
What it does not do: sample or grade (``tirl.eval.runner``).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tirl.eval.metrics import (Estimate, bootstrap_mean, majority_vote_score, pass_at_k,
                               pass_k_levels)
from tirl.eval.samples import SampleRecord, median

PAPER_PROTOCOL = {"temperature": 0.6, "k": 16, "max_turns": 30, "max_tokens": 30000}


@dataclass
class BenchmarkSummary:
    benchmark: str
    k: int
    problems: int  # problems with at least one sample
    samples: int
    missing_samples: int  # problems × k − samples
    avg_at_k: Estimate  # mean pass@1 over the k samples
    pass_at: dict[int, Estimate]  # pass@j for j in 1, 2, 4, …, k (unbiased)
    maj_at_k: Estimate
    response_tokens_mean: float
    response_tokens_median: float
    generated_tokens_mean: float
    correct_response_tokens_mean: float
    tool_calls_per_sample: float
    tool_calls_per_problem: float
    tool_error_rate: float  # failed calls / calls run (infra failures and unrun calls excluded)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    infra_errors: int = 0
    identical_sample_problems: int = 0  # problems whose ≥2 samples all have the same text
    per_problem: dict[str, dict[str, float]] = field(default_factory=dict)
    # e.g. {"level": {"1": {"problems": 43, "avg": 0.9, "maj": 0.95}, ...}} (MATH-500, CHAMP)
    breakdowns: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass_at"] = {str(j): e.to_dict() for j, e in self.pass_at.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkSummary:
        d = dict(d)
        d["avg_at_k"] = Estimate(**d["avg_at_k"])
        d["maj_at_k"] = Estimate(**d["maj_at_k"])
        d["pass_at"] = {int(j): Estimate(**e) for j, e in d["pass_at"].items()}
        return cls(**d)


def group_by_problem(records: Sequence[SampleRecord], k: int) -> dict[str, list[SampleRecord]]:
    """Records per problem (first appearance order), keeping sample indices < k, sorted."""
    by: dict[str, list[SampleRecord]] = defaultdict(list)
    for r in records:
        if r.sample < k:
            by[r.problem_id].append(r)
    return {pid: sorted(rs, key=lambda r: r.sample) for pid, rs in by.items()}


def per_problem_scores(records: Sequence[SampleRecord], k: int) -> dict[str, dict[str, float]]:
    """problem id → {"avg": fraction correct, "maj": maj score, "pass@k": …, "n": samples}."""
    out = {}
    for pid, rs in group_by_problem(records, k).items():
        n = len(rs)
        c = sum(r.correct for r in rs)
        out[pid] = {"n": n, "correct": c, "avg": c / n,
                    "maj": majority_vote_score([r.vote for r in rs], [r.correct for r in rs]),
                    f"pass@{k}": pass_at_k(n, c, min(k, n))}
    return out


def summarize(
    benchmark: str, records: Sequence[SampleRecord], k: int, n_boot: int = 1000, seed: int = 0
) -> BenchmarkSummary:
    groups = group_by_problem(records, k)
    rs_all = [r for rs in groups.values() for r in rs]
    scores = per_problem_scores(rs_all, k)
    pids = list(groups)
    n_min = min((len(groups[p]) for p in pids), default=0)
    avg = bootstrap_mean([scores[p]["avg"] for p in pids], n_boot, seed)
    maj = bootstrap_mean([scores[p]["maj"] for p in pids], n_boot, seed + 1)
    pass_at: dict[int, Estimate] = {}
    for j in pass_k_levels(k):
        if j > n_min:
            continue
        vals = [pass_at_k(len(groups[p]), scores[p]["correct"], j) for p in pids]
        # pass@1 is avg@k: same seed, so the same interval
        pass_at[j] = bootstrap_mean(vals, n_boot, seed if j == 1 else seed + 2 + j)
    lengths = [r.response_tokens for r in rs_all]
    calls = sum(r.tool_calls for r in rs_all)
    errors = sum(r.tool_errors for r in rs_all)
    # the rate is over calls the model is accountable for: run (or unparseable), not failed by
    # the sandbox service, not cut by the turn limit
    judged = calls - sum(r.infra_tool_errors + r.unexecuted_tool_calls for r in rs_all)
    correct_lengths = [r.response_tokens for r in rs_all if r.correct]
    return BenchmarkSummary(
        benchmark=benchmark,
        k=k,
        problems=len(pids),
        samples=len(rs_all),
        missing_samples=len(pids) * k - len(rs_all),
        avg_at_k=avg,
        pass_at=pass_at,
        maj_at_k=maj,
        response_tokens_mean=_mean(lengths),
        response_tokens_median=median(lengths),
        generated_tokens_mean=_mean([r.generated_tokens for r in rs_all]),
        correct_response_tokens_mean=_mean(correct_lengths),
        tool_calls_per_sample=calls / len(rs_all) if rs_all else math.nan,
        tool_calls_per_problem=calls / len(pids) if pids else math.nan,
        tool_error_rate=errors / judged if judged > 0 else math.nan,
        finish_reasons=dict(Counter(r.finish_reason or "none" for r in rs_all).most_common()),
        statuses=dict(Counter(r.status for r in rs_all).most_common()),
        infra_errors=sum(r.status == "infra_error" for r in rs_all),
        identical_sample_problems=sum(
            1 for rs in groups.values()
            if len(rs) >= 2 and rs[0].text is not None and all(r.text == rs[0].text for r in rs)),
        per_problem=scores,
        breakdowns=breakdowns(groups, scores),
    )


def breakdowns(groups: dict[str, list[SampleRecord]], scores: dict[str, dict[str, float]]
               ) -> dict[str, dict[str, dict[str, float]]]:
    """avg@k and maj@k per value of each grouping field the problems carry (level, subject…)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    fields_seen = {f for rs in groups.values() for f in (rs[0].meta or {})}
    for f in sorted(fields_seen):
        by: dict[str, list[str]] = defaultdict(list)
        for pid, rs in groups.items():
            v = (rs[0].meta or {}).get(f)
            if v is not None:
                by[str(v)].append(pid)
        if len(by) < 2:
            continue
        out[f] = {v: {"problems": len(pids),
                      "avg": sum(scores[p]["avg"] for p in pids) / len(pids),
                      "maj": sum(scores[p]["maj"] for p in pids) / len(pids)}
                  for v, pids in sorted(by.items(), key=lambda kv: _natural(kv[0]))}
    return out


def _natural(v: str) -> tuple:
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def protocol_warnings(settings: dict[str, Any]) -> list[str]:
    """Loud problems with the settings (the temperature-0 trap) and quiet protocol deviations."""
    out = []
    t, k = settings.get("temperature"), settings.get("k")
    if t is not None and k is not None and t == 0 and k > 1:
        out.append(
            f"temperature 0 with k={k}: greedy decoding makes the {k} samples of a problem "
            "identical (up to engine nondeterminism), so avg@k is just greedy accuracy, pass@k "
            "and maj@k mean nothing, and the intervals are too narrow. The paper samples at "
            "temperature 0.6 (--temperature 0.6), or use --k 1 for a greedy run."
        )
    return out


def sample_warnings(summaries: Sequence[BenchmarkSummary], settings: dict[str, Any]) -> list[str]:
    """Warnings from the samples themselves: identical samples at a temperature above 0 mean
    the engine ignored the temperature (or seeds every request the same way)."""
    out = []
    t = settings.get("temperature")
    for s in summaries:
        if t and s.k > 1 and s.problems and s.identical_sample_problems >= max(2, 0.5 * s.problems):
            out.append(
                f"{s.benchmark}: {s.identical_sample_problems} of {s.problems} problems got {s.k} "
                f"identical samples at temperature {t}. The engine is probably ignoring the "
                "temperature (or a fixed seed per request); avg@k, pass@k and maj@k are then greedy "
                "numbers in disguise. Check the server's sampling settings."
            )
    return out


def protocol_deviations(settings: dict[str, Any]) -> list[str]:
    return [f"{key} = {settings.get(key)} (paper: {want})" for key, want in PAPER_PROTOCOL.items()
            if settings.get(key) is not None and settings.get(key) != want]


# ---------------------------------------------------------------------------------------
# writing


def _fmt_num(x: float, digits: int = 0) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _fmt_pct(x: float) -> str:
    """A fraction as a percentage, "–" when undefined (e.g. no tool calls at all)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def markdown_report(summaries: Sequence[BenchmarkSummary], settings: dict[str, Any],
                    warnings: Sequence[str]) -> str:
    lines = ["# Evaluation report", ""]
    model = settings.get("model") or "?"
    where = f" at {settings['base_url']}" if settings.get("base_url") else ""
    lines.append(f"Model: `{model}`{where}  ")
    lines.append(
        f"k = {settings.get('k')} samples per problem, temperature {settings.get('temperature')}, "
        f"top-p {settings.get('top_p')}, up to {settings.get('max_turns')} turns and "
        f"{settings.get('max_tokens')} tokens; seed {settings.get('seed')}.  "
    )
    lines.append("Intervals: 95% percentile bootstrap over problems "
                 f"({settings.get('bootstrap_samples')} resamples). Accuracies in %.")
    dev = protocol_deviations(settings)
    if dev:
        lines += ["", "Differs from the paper's protocol (§5.1): " + "; ".join(dev) + "."]
    for w in warnings:
        lines += ["", f"> **WARNING:** {w}"]
    k = settings.get("k", "k")
    lines += ["", "## Summary", "",
              f"| benchmark | problems | avg@{k} | maj@{k} | pass@{k} | mean len | tool calls/sample | tool-error rate |",
              "|---|---:|---|---|---|---:|---:|---:|"]
    for s in summaries:
        pk = s.pass_at.get(s.k)
        lines.append(
            f"| {s.benchmark} | {s.problems} | {s.avg_at_k.fmt()} | {s.maj_at_k.fmt()} | "
            f"{pk.fmt() if pk else '–'} | {_fmt_num(s.response_tokens_mean)} | "
            f"{_fmt_num(s.tool_calls_per_sample, 2)} | {_fmt_pct(s.tool_error_rate)} |"
        )
    for s in summaries:
        lines += ["", f"## {s.benchmark}", ""]
        if s.missing_samples:
            lines += [f"> Incomplete: {s.missing_samples} of {s.problems * s.k} samples missing "
                      "(rerun the same command to finish).", ""]
        if s.infra_errors:
            lines += [f"> {s.infra_errors} samples failed for infrastructure reasons (engine or "
                      "sandbox) and count as wrong; rerun the same command to retry them.", ""]
        lines += ["| metric | value |", "|---|---|",
                  f"| avg@{s.k} (mean pass@1) | {s.avg_at_k.fmt()} |",
                  f"| maj@{s.k} | {s.maj_at_k.fmt()} |"]
        for j, e in s.pass_at.items():
            lines.append(f"| pass@{j} | {e.fmt()} |")
        lines += [
            f"| problems × samples | {s.problems} × {s.k} ({s.samples} samples) |",
            f"| response length, tokens (mean / median) | {_fmt_num(s.response_tokens_mean)} / "
            f"{_fmt_num(s.response_tokens_median)} |",
            f"| generated tokens (mean) | {_fmt_num(s.generated_tokens_mean)} |",
            f"| length of correct responses (mean) | {_fmt_num(s.correct_response_tokens_mean)} |",
            f"| tool calls per problem / per sample | {_fmt_num(s.tool_calls_per_problem, 2)} / "
            f"{_fmt_num(s.tool_calls_per_sample, 2)} |",
            f"| tool-error rate | {_fmt_pct(s.tool_error_rate)} |",
            f"| finish reasons | {', '.join(f'{k}: {v}' for k, v in s.finish_reasons.items())} |",
            f"| grades | {', '.join(f'{k}: {v}' for k, v in s.statuses.items())} |",
        ]
        for fname, table in s.breakdowns.items():
            lines += ["", f"By {fname}:", "", f"| {fname} | problems | avg@{s.k} | maj@{s.k} |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {v} | {row['problems']} | {100 * row['avg']:.1f} | {100 * row['maj']:.1f} |"
                      for v, row in table.items()]
    lines += ["", "Plots: `plots/accuracy.png`, `plots/response_length.png`. "
              "Per-sample results: `samples/<benchmark>.jsonl`.", ""]
    return "\n".join(lines)


def plot_accuracy(summaries: Sequence[BenchmarkSummary], path: Path) -> Path | None:
    if not summaries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [s.benchmark for s in summaries]
    k = summaries[0].k
    series = [(f"avg@{k}", [s.avg_at_k for s in summaries]),
              (f"maj@{k}", [s.maj_at_k for s in summaries]),
              (f"pass@{k}", [s.pass_at.get(s.k, Estimate(math.nan)) for s in summaries])]
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(names) + 2), 3.6))
    for i, (label, ests) in enumerate(series):
        vals = np.array([100 * e.value for e in ests], dtype=float)
        lo = np.array([100 * (e.value - e.lo) if e.lo is not None else 0 for e in ests], dtype=float)
        hi = np.array([100 * (e.hi - e.value) if e.hi is not None else 0 for e in ests], dtype=float)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"accuracy with 95% bootstrap intervals (k = {summaries[0].k})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_lengths(records_by_bench: dict[str, Sequence[SampleRecord]], path: Path) -> Path | None:
    if not any(records_by_bench.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, rs in records_by_bench.items() if rs]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes.flat, names):
        rs = records_by_bench[name]
        good = [r.response_tokens for r in rs if r.correct]
        bad = [r.response_tokens for r in rs if not r.correct]
        ax.hist([good, bad], bins=30, stacked=True, label=["correct", "incorrect"],
                color=["tab:green", "tab:red"])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("response length (tokens)", fontsize=8)
        ax.set_ylabel("samples", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | Path, summaries: Sequence[BenchmarkSummary], settings: dict[str, Any],
    records_by_bench: dict[str, Sequence[SampleRecord]] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``out_dir``; return their paths."""
    from tirl.runs import _jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    data = {"settings": settings, "warnings": list(warnings),
            "protocol_deviations": protocol_deviations(settings),
            "benchmarks": [s.to_dict() for s in summaries]}
    paths["json"].write_text(json.dumps(_jsonable(data), indent=1, ensure_ascii=False) + "\n")
    paths["md"].write_text(markdown_report(summaries, settings, warnings))
    acc = plot_accuracy(summaries, out / "plots" / "accuracy.png")
    if acc is not None:
        paths["accuracy_png"] = acc
    if records_by_bench:
        lens = plot_lengths(records_by_bench, out / "plots" / "response_length.png")
        if lens is not None:
            paths["length_png"] = lens
    return paths


def read_report(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "report.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: {run_dir} is not a finished `tirl eval` run directory "
            "(run `tirl eval report DIR` to rebuild a report from its samples)"
        )
    return json.loads(p.read_text())
