"""Comparing two evaluation runs: per-benchmark differences with paired bootstrap intervals.

:func:`compare_runs` reads the per-sample files of two ``tirl eval`` output directories,
keeps, per benchmark, the problems both runs answered, and reports ``A − B`` of avg@k and
maj@k with a paired bootstrap interval (the same problems resampled for both runs, which
is much tighter than comparing two independent intervals) and a two-sided bootstrap
p-value. Each run is scored with its own k (its ``report.json``; else its samples).

What it does not do: check that the runs used the same problem wording or settings — the
settings of both are shown side by side so a person can judge.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tirl.eval.metrics import PairedDiff, paired_bootstrap
from tirl.eval.report import per_problem_scores
from tirl.eval.samples import SampleRecord, SampleStore


@dataclass
class BenchmarkComparison:
    benchmark: str
    k_a: int
    k_b: int
    problems: int  # problems in both runs
    only_a: int
    only_b: int
    avg_a: float
    avg_b: float
    avg_diff: PairedDiff
    maj_a: float
    maj_b: float
    maj_diff: PairedDiff

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, list[SampleRecord]]]:
    """(settings, records per benchmark) of a ``tirl eval`` output directory."""
    d = Path(run_dir)
    files = sorted((d / "samples").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(
            f"{d} has no samples/*.jsonl; give the output directory of a `tirl eval` run"
        )
    settings: dict[str, Any] = {}
    if (d / "report.json").is_file():
        settings = json.loads((d / "report.json").read_text()).get("settings", {})
    elif (d / "eval_settings.json").is_file():
        settings = json.loads((d / "eval_settings.json").read_text())
    return settings, {f.stem: list(SampleStore(f).load().values()) for f in files}


def _k_of(settings: dict[str, Any], records: list[SampleRecord]) -> int:
    return int(settings.get("k") or (max(r.sample for r in records) + 1))


def compare_runs(run_a: str | Path, run_b: str | Path, n_boot: int = 1000, seed: int = 0
                 ) -> tuple[list[BenchmarkComparison], dict[str, Any], dict[str, Any]]:
    """Per-benchmark comparisons (benchmarks present in both runs), and both runs' settings."""
    sa, ra = load_run(run_a)
    sb, rb = load_run(run_b)
    common = [b for b in ra if b in rb]
    if not common:
        raise ValueError(
            f"{run_a} ({', '.join(ra)}) and {run_b} ({', '.join(rb)}) share no benchmark"
        )
    out = []
    for i, bench in enumerate(common):
        ka, kb = _k_of(sa, ra[bench]), _k_of(sb, rb[bench])
        pa, pb = per_problem_scores(ra[bench], ka), per_problem_scores(rb[bench], kb)
        ids = [p for p in pa if p in pb]
        avg_a = [pa[p]["avg"] for p in ids]
        avg_b = [pb[p]["avg"] for p in ids]
        maj_a = [pa[p]["maj"] for p in ids]
        maj_b = [pb[p]["maj"] for p in ids]
        n = len(ids) or 1
        out.append(BenchmarkComparison(
            benchmark=bench, k_a=ka, k_b=kb, problems=len(ids),
            only_a=len(set(pa) - set(pb)), only_b=len(set(pb) - set(pa)),
            avg_a=sum(avg_a) / n, avg_b=sum(avg_b) / n,
            avg_diff=paired_bootstrap(avg_a, avg_b, n_boot, seed + 2 * i),
            maj_a=sum(maj_a) / n, maj_b=sum(maj_b) / n,
            maj_diff=paired_bootstrap(maj_a, maj_b, n_boot, seed + 2 * i + 1),
        ))
    return out, sa, sb


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def _interval(d: PairedDiff) -> str:
    if d.lo is None or d.hi is None:
        return _pct(d.diff)
    p = "" if d.p_value is None else f" (p={d.p_value:.3f})"
    return f"{_pct(d.diff)} [{_pct(d.lo)}, {_pct(d.hi)}]{p}"


def comparison_markdown(rows: list[BenchmarkComparison], run_a: str, run_b: str,
                        sa: dict[str, Any], sb: dict[str, Any]) -> str:
    lines = [f"# {run_a} (A) vs {run_b} (B)", "",
             f"A: model `{sa.get('model')}`, k={sa.get('k')}, temperature {sa.get('temperature')}  ",
             f"B: model `{sb.get('model')}`, k={sb.get('k')}, temperature {sb.get('temperature')}  ",
             "Differences A − B in percentage points, paired bootstrap 95% interval over the "
             "problems both runs answered.", "",
             "| benchmark | problems | avg@k A | avg@k B | Δ avg@k | maj@k A | maj@k B | Δ maj@k |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r.benchmark} | {r.problems} | {100 * r.avg_a:.1f} | {100 * r.avg_b:.1f} | "
            f"{_interval(r.avg_diff)} | {100 * r.maj_a:.1f} | {100 * r.maj_b:.1f} | {_interval(r.maj_diff)} |"
        )
    notes = [f"{r.benchmark}: {r.only_a} problems only in A, {r.only_b} only in B (left out)"
             for r in rows if r.only_a or r.only_b]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
