"""Pictures and the Markdown report of a training run (``plots/*.png``, ``report.md``).

Reads ``metrics.jsonl`` only, so it can be rerun on a finished or running directory.
What it does not do: compare runs (``benchmarks/roc_ablation.py`` does that for its pair).
"""

from __future__ import annotations

from pathlib import Path

from tirl.runs import RunDir, fmt_cell, plot_series, read_metrics

TRAIN_KEYS = ["reward", "pass_rate", "tool_error_ratio_pos", "tool_error_ratio", "response_len_mean",
              "tool_calls_per_traj", "groups_dropped", "clip_frac", "entropy", "grad_norm",
              "format_penalty", "tokens_per_s"]
TIME_KEYS = ["time_generation", "time_tools", "time_grading", "time_update"]


def write_plots(run: RunDir) -> list[Path]:
    recs = read_metrics(run.metrics_path)
    rl = [r for r in recs if r.get("phase") == "rl"]
    ev = [r for r in recs if r.get("phase") == "eval"]
    out = []
    for name, keys, rows in (("training.png", TRAIN_KEYS, rl), ("time.png", TIME_KEYS, rl),
                             ("held_out.png", ["held_out_acc", "held_out_tool_use"], ev)):
        p = plot_series(rows, keys, run.plots / name, title=name[:-4].replace("_", " "))
        if p:
            out.append(p)
    for key in ("reward", "tool_error_ratio_pos", "response_len_mean"):
        p = plot_series(rl, [key], run.plots / f"{key}.png")
        if p:
            out.append(p)
    sft = [r for r in recs if r.get("phase") == "sft"]
    p = plot_series(sft, ["sft_loss"], run.plots / "sft_loss.png", x="sft_step")
    if p:
        out.append(p)
    return out


def write_report(run: RunDir, cfg) -> Path:
    write_plots(run)
    recs = read_metrics(run.metrics_path)
    rl = [r for r in recs if r.get("phase") == "rl"]
    ev = [r for r in recs if r.get("phase") == "eval"]
    sft = [r for r in recs if r.get("phase") == "sft_done"]
    lines = [f"# Run report: {cfg.run.name}", ""]
    lines.append(f"Model: `{cfg.model.path}`; RL: {cfg.rl.algorithm} (G = {cfg.rl.group_size}, "
                 f"oversample {cfg.rl.oversample}, {cfg.rl.problems_per_step} groups/step, lr {cfg.rl.lr}); "
                 f"tasks {cfg.data.tasks}; seed {cfg.run.seed}.")
    lines.append("")
    lines.append("## Held-out accuracy")
    lines.append("")
    lines.append("| after | step | accuracy | tool use | n |")
    lines.append("|---|---|---|---|---|")
    for r in ev:
        lines.append(f"| {r['label']} | {r['step']} | {100 * r['held_out_acc']:.1f}% | "
                     f"{100 * r.get('held_out_tool_use', 0):.0f}% | {r['held_out_n']} |")
    if len(ev) >= 2:
        lines.append("")
        lines.append(f"Change from `{ev[0]['label']}` to `{ev[-1]['label']}`: "
                     f"{100 * (ev[-1]['held_out_acc'] - ev[0]['held_out_acc']):+.1f} points.")
    if sft:
        s = sft[-1]
        lines += ["", f"SFT: {s.get('sft_examples')} examples, final loss {fmt_cell(s.get('sft_final_loss'))}, "
                      f"{fmt_cell(s.get('sft_seconds'))} s."]
    if rl:
        lines += ["", "## Training steps", "",
                  "| step | stage | reward | pass rate | kept/dropped groups | tool err (pos) | len | clip | s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rl:
            lines.append(f"| {r['step']} | {r.get('stage')} | {fmt_cell(r.get('reward'))} | {fmt_cell(r.get('pass_rate'))} | "
                         f"{r.get('groups_kept')}/{r.get('groups_dropped')} | {fmt_cell(r.get('tool_error_ratio_pos'))} | "
                         f"{fmt_cell(r.get('response_len_mean'))} | {fmt_cell(r.get('clip_frac'))} | {fmt_cell(r.get('time_step'))} |")
        total = sum(r.get("time_step", 0) for r in rl)
        lines += ["", f"RL time: {total:.0f} s over {len(rl)} steps."]
    lines += ["", "## Pictures", ""]
    for name in ("reward.png", "held_out.png", "tool_error_ratio_pos.png", "response_len_mean.png",
                 "training.png", "time.png", "sft_loss.png"):
        if (run.plots / name).exists():
            lines.append(f"![{name[:-4]}](plots/{name})")
    path = run.root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
