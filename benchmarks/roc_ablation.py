"""GRPO-RoC vs plain GRPO over seeds, in miniature (paper Fig. 4 and 9; issue #15).

The task is ``configs/roc.toml``: a small transformer trained from scratch on 2 CPU cores,
SFT on ``tool_recovery`` material (40% of the tool traces make a realistic first mistake,
read the traceback and fix it), then RL on problems that need ``math.comb``, fractions or
stdin, with 3 turns — so correct answers are often reached through a failed call, and RoC
has something to select against.

Design: one SFT checkpoint (the config's SFT, made once or taken from ``--sft-from RUN``,
then ``--sft-extra-epochs`` more epochs on the same material) is copied into every arm;
each seed runs both algorithms from it with the same steps and problems per step:
``grpo_roc`` (2G rollouts, resample on correct down to G) and ``grpo`` (G rollouts). The
seed changes the RL problems, their order, the held-out set and every rollout's sampling
seed. RL runs in ``--stages`` stages of ``--steps`` steps after a 0-step stage, so held-out
accuracy is measured before RL and after each stage.

Measured per step on *all sampled* rollouts (the policy's behaviour — not RoC's kept subset,
which is filtered by construction): tool-error ratio in positive traces, tool calls per
trajectory, response length, recovery rate (of trajectories with a failed call, the
fraction answered correctly), reward. The effect size is GRPO − RoC of each metric over the
second half of the steps, per seed, with a t interval over seeds (paired by seed).

Writes ``<out>/report.md``, ``<out>/roc_ablation.png`` (mean over seeds with a min–max
band), each arm's run directory (metrics, trajectories, checkpoints) and the analysis of
seed 0's two arms side by side (``tirl.analysis``). Prints JSON.

    python benchmarks/roc_ablation.py [--out runs/roc_ablation] [--seeds 0 1 2 3 4]
        [--stages 3] [--steps 3] [--sft-from RUN_DIR] [--sft-extra-epochs 4] [--jobs 2]
        [key=value ...]

What it does not do: match the paper's scale or its 14B model; it shows the direction of
the effect, on a task built to contain recoverable tool errors.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

ARMS = ("grpo_roc", "grpo")
CURVE_KEYS = ("tool_error_ratio_pos_sampled", "tool_calls_per_traj", "response_len_mean",
              "recovery_rate", "reward")
# two-sided 95% t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t_interval(xs: list[float], confidence_t: dict[int, float] = _T95) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t interval of the mean of ``xs`` (needs ≥ 2 values)."""
    if len(xs) < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds, got {len(xs)}")
    m = statistics.fmean(xs)
    df = len(xs) - 1
    t = confidence_t.get(df) or confidence_t[max(k for k in confidence_t if k <= df)]
    half = t * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


# ---------------------------------------------------------------------------------------
# runs


def _arm_config(config: str, out: Path, name: str, seed: int, algo: str, stages: int, steps: int,
                overrides: list[str]):
    from tirl.config import load_config

    cfg = load_config(config, [f"run.output_dir={out}", f"run.name={name}", f"run.seed={seed}",
                               f"rl.algorithm={algo}"] + overrides)
    base = cfg.stages[0]
    st = [base.model_copy(update={"name": "before_rl", "steps": 0})]
    st += [base.model_copy(update={"name": f"rl{i + 1}", "steps": steps}) for i in range(stages)]
    return cfg.model_copy(update={"stages": st})


def make_sft(config: str, out: Path, overrides: list[str]) -> Path:
    """SFT once (seed 0) with a 0-step stage; returns the run directory."""
    from tirl.config import load_config
    from tirl.rl.trainer import train

    cfg = load_config(config, [f"run.output_dir={out}", "run.name=sft", "run.seed=0"] + overrides)
    cfg = cfg.model_copy(update={"stages": [cfg.stages[0].model_copy(update={"name": "sft_eval", "steps": 0})]})
    train(cfg, progress=False)
    return out / "sft"


def continue_sft(config: str, sft_run: Path, out: Path, epochs: int, lr: float, overrides: list[str]) -> Path:
    """``epochs`` more SFT epochs on the same material (a restarted cosine schedule at ``lr``)
    from ``sft_run``'s checkpoint; writes ``<out>/sft_plus/checkpoints/sft`` and returns that
    run directory. The CPU budget of a single long SFT was not there; this reuses the first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tirl.config import load_config
    from tirl.data.sft import load_sft_examples, tokenize_example
    from tirl.rl.sft import run_sft

    dst_run = out / "sft_plus"
    dst = dst_run / "checkpoints" / "sft"
    if (dst / "trainer_state.pt").exists():
        return dst_run
    cfg = load_config(config, ["run.seed=0"] + overrides)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    src = sft_run / "checkpoints" / "sft"
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    exs = load_sft_examples(cfg.sft.data, cfg.sft.size, cfg.run.seed)
    toks = [tokenize_example(tok, e, cfg.agent.system_prompt, cfg.sft.max_length,
                             timing=cfg.agent.tool_response_timing, open_with_reason=cfg.agent.open_with_reason)
            for e in exs]
    res = run_sft(model, toks, epochs=epochs, lr=lr, batch_size=cfg.sft.batch_size,
                  pad_id=tok.pad_token_id or 0, seed=cfg.run.seed + 1, warmup_steps=cfg.sft.warmup_steps)
    tmp = dst.with_name("sft.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)  # trainer_state.pt (SFT done, step 0) and the tokenizer
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(dst)
    (dst_run / "sft_continue.json").write_text(json.dumps(
        {"from": str(src), "epochs": epochs, "lr": lr, "steps": res.steps, "final_loss": res.final_loss,
         "seconds": res.seconds}))
    print(json.dumps({"sft_continue": {"epochs": epochs, "final_loss": res.final_loss,
                                       "seconds": res.seconds}}), file=sys.stderr, flush=True)
    return dst_run


def seed_arm(arm_dir: Path, sft_run: Path) -> None:
    """Start an arm from the SFT checkpoint (a copy), as if it had just finished SFT."""
    src = sft_run / "checkpoints" / "sft"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no SFT checkpoint; run without --sft-from to make one")
    dst = arm_dir / "checkpoints"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst / "sft")
    (dst / "latest").write_text("sft\n")


def run_arm(config: str, out: str, sft_run: str, seed: int, algo: str, stages: int, steps: int,
            overrides: list[str]) -> str:
    """One arm from the SFT checkpoint (a finished arm is kept: a rerun resumes)."""
    from tirl.rl.trainer import train

    name = f"{algo}_s{seed}"
    arm = Path(out) / name
    if not (arm / "report.md").exists():
        if not (arm / "checkpoints").exists():
            seed_arm(arm, Path(sft_run))
        train(_arm_config(config, Path(out), name, seed, algo, stages, steps, overrides), progress=False)
    s = summarize_arm(arm)
    print(json.dumps({"arm": name, "held_out": s["held_out"], "late": s["late"]}), file=sys.stderr, flush=True)
    return name


def summarize_arm(root: Path) -> dict:
    from tirl.runs import read_metrics

    recs = read_metrics(root / "metrics.jsonl")
    rl = [r for r in recs if r.get("phase") == "rl"]
    ev = [r for r in recs if r.get("phase") == "eval"]
    half = len(rl) // 2
    late = {k: _mean([r.get(k) for r in rl[half:]]) for k in CURVE_KEYS}
    early = {k: _mean([r.get(k) for r in rl[:half]]) for k in CURVE_KEYS}
    return {
        "held_out": [(e["step"], e["held_out_acc"]) for e in ev],
        "series": {k: [r.get(k) for r in rl] for k in CURVE_KEYS},
        "early": early, "late": late,
        "rl_seconds": sum(r.get("time_step", 0) for r in rl),
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------------------------------
# plots and report


def plot_curves(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["held_out_acc"] + list(CURVE_KEYS)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    colors = {"grpo_roc": "tab:blue", "grpo": "tab:orange"}
    for ax, key in zip(axes.flat, keys):
        for algo in ARMS:
            runs = [res[algo][s] for s in sorted(res[algo])]
            if key == "held_out_acc":
                xs = [x for x, _ in runs[0]["held_out"]]
                ys = [[y for _, y in r["held_out"]] for r in runs]
            else:
                n = min(len(r["series"][key]) for r in runs)
                xs = list(range(1, n + 1))
                ys = [[v if v is not None else float("nan") for v in r["series"][key][:n]] for r in runs]
            cols = list(zip(*ys))
            mean = [_nanmean(c) for c in cols]
            lo = [_nanmin(c) for c in cols]
            hi = [_nanmax(c) for c in cols]
            ax.plot(xs, mean, marker="o", ms=3, color=colors[algo], label=f"{algo} (mean of {len(runs)} seeds)")
            ax.fill_between(xs, lo, hi, color=colors[algo], alpha=0.2)
        ax.set_title(key + (" (all sampled rollouts)" if key != "held_out_acc" else " (greedy)"), fontsize=9)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("GRPO-RoC vs GRPO: mean over seeds, band = min–max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _nanmean(c):
    v = [x for x in c if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def _nanmin(c):
    v = [x for x in c if x is not None and not math.isnan(x)]
    return min(v) if v else float("nan")


def _nanmax(c):
    v = [x for x in c if x is not None and not math.isnan(x)]
    return max(v) if v else float("nan")


def effects(res: dict, seeds: list[int]) -> dict:
    """GRPO − RoC per seed (second half of the steps; final held-out), with t intervals."""
    out = {}
    for key in CURVE_KEYS:
        diffs = [res["grpo"][s]["late"][key] - res["grpo_roc"][s]["late"][key] for s in seeds
                 if res["grpo"][s]["late"][key] is not None and res["grpo_roc"][s]["late"][key] is not None]
        out[key] = _effect(diffs)
    finals = [res["grpo"][s]["held_out"][-1][1] - res["grpo_roc"][s]["held_out"][-1][1] for s in seeds]
    out["held_out_acc_final"] = _effect(finals)
    return out


def _effect(diffs: list[float]) -> dict:
    d = {"grpo_minus_roc_per_seed": diffs}
    if len(diffs) >= 2:
        m, lo, hi = t_interval(diffs)
        d.update(mean=m, ci95=[lo, hi], excludes_zero=lo > 0 or hi < 0)
    return d


def write_report(out: Path, res: dict, eff: dict, seeds: list[int], meta: dict, analyses: dict) -> Path:
    lines = ["# GRPO-RoC vs GRPO (benchmarks/roc_ablation.py)", "",
             f"Seeds {seeds}; {meta['stages']} stages × {meta['steps']} steps; config `{meta['config']}` "
             f"{' '.join(meta['overrides'])}; wall {meta['seconds'] / 60:.1f} min.", "",
             "![curves](roc_ablation.png)", "",
             "## Effect size (GRPO − RoC, second half of RL; 95% t interval over seeds)", "",
             "| metric | per seed | mean | 95% CI | excludes 0 |", "|---|---|---|---|---|"]
    for k, e in eff.items():
        ps = ", ".join(f"{x:+.3f}" for x in e["grpo_minus_roc_per_seed"])
        ci = f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]" if "ci95" in e else "–"
        mean = f"{e['mean']:+.3f}" if "mean" in e else "–"
        lines.append(f"| {k} | {ps or '–'} | {mean} | {ci} | {e.get('excludes_zero', '–')} |")
    lines += ["", "## Per arm", "", "| arm | seed | held-out (before → after each stage) | "
              + " | ".join(f"{k} early→late" for k in CURVE_KEYS) + " |",
              "|---|---|---|" + "---|" * len(CURVE_KEYS)]
    for algo in ARMS:
        for s in seeds:
            r = res[algo][s]
            ho = " → ".join(f"{100 * y:.0f}%" for _, y in r["held_out"])
            cells = [f"{_fmt(r['early'][k])} → {_fmt(r['late'][k])}" for k in CURVE_KEYS]
            lines.append(f"| {algo} | {s} | {ho} | " + " | ".join(cells) + " |")
    if analyses:
        lines += ["", "## Analyses of seed 0 (tirl.analysis)", ""]
        lines += [f"- {algo}: [{p}]({p})" for algo, p in analyses.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v):
    return "–" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/roc_ablation")
    ap.add_argument("--config", default="roc")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--stages", type=int, default=3, help="RL stages (held-out measured after each)")
    ap.add_argument("--steps", type=int, default=3, help="RL steps per stage")
    ap.add_argument("--sft-from", default=None, help="a run directory with checkpoints/sft to start from")
    ap.add_argument("--jobs", type=int, default=1, help="arms run at once (processes)")
    ap.add_argument("--sft-extra-epochs", type=int, default=4,
                    help="more SFT epochs on the same material after the config's SFT (0: none)")
    ap.add_argument("--sft-extra-lr", type=float, default=1e-3)
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (section.key=value)")
    args = ap.parse_args(argv)
    if len(args.seeds) < 2:
        ap.error("--seeds: give at least 2 seeds (an interval over seeds needs them)")

    from tirl.analysis import analyze

    out = Path(args.out)
    t0 = time.perf_counter()
    sft_run = Path(args.sft_from) if args.sft_from else make_sft(args.config, out, args.overrides)
    if args.sft_extra_epochs:
        sft_run = continue_sft(args.config, sft_run, out, args.sft_extra_epochs, args.sft_extra_lr, args.overrides)
    jobs = [(args.config, str(out), str(sft_run), seed, algo, args.stages, args.steps, args.overrides)
            for seed in args.seeds for algo in ARMS]
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(run_arm, *zip(*jobs)))
    else:
        for j in jobs:
            run_arm(*j)
    res: dict = {a: {} for a in ARMS}
    for seed in args.seeds:
        for algo in ARMS:
            res[algo][seed] = summarize_arm(out / f"{algo}_s{seed}")
    eff = effects(res, args.seeds)
    plot = plot_curves(res, out / "roc_ablation.png")
    analyses = {}
    for algo in ARMS:
        arm = out / f"{algo}_s{args.seeds[0]}"
        from tirl.analysis.load import latest_checkpoint_dir

        rep = analyze(arm, arm / "analysis", model=latest_checkpoint_dir(arm))
        analyses[algo] = str(rep.relative_to(out))
    meta = {"stages": args.stages, "steps": args.steps, "config": args.config, "overrides": args.overrides,
            "seconds": time.perf_counter() - t0}
    report = write_report(out, res, eff, args.seeds, meta, analyses)
    result = {
        "benchmark": "roc_ablation", "seconds": meta["seconds"], "seeds": args.seeds,
        "effect_grpo_minus_roc": eff,
        "ratio_roc_over_grpo_late": {
            k: (_mean([res["grpo_roc"][s]["late"][k] for s in args.seeds])
                / _mean([res["grpo"][s]["late"][k] for s in args.seeds]))
            if _mean([res["grpo"][s]["late"][k] for s in args.seeds]) else None for k in CURVE_KEYS},
        "held_out": {a: {s: res[a][s]["held_out"] for s in args.seeds} for a in ARMS},
        "plot": str(plot), "report": str(report),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
