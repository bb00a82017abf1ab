"""Miniature of the paper's Fig. 4: GRPO-RoC vs plain GRPO with tools, same seed and budget.

Runs the demo recipe twice from one shared SFT checkpoint: once with ``rl.algorithm =
grpo_roc`` (oversample 2G, resample on correct) and once with ``grpo`` (G rollouts, no
oversampling, no RoC), same seed, steps and groups per step. Prints JSON with each arm's
held-out accuracy, tool-error ratio in positive (kept) traces and response length (early vs
late steps), and the RoC/GRPO ratios; writes ``<out>/roc_ablation.png``.

    python benchmarks/roc_ablation.py [--out runs/roc_ablation] [--steps N] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _summary(root: Path) -> dict:
    from tirl.runs import read_metrics

    recs = read_metrics(root / "metrics.jsonl")
    rl = [r for r in recs if r.get("phase") == "rl"]
    ev = [r for r in recs if r.get("phase") == "eval"]
    half = len(rl) // 2
    return {
        "held_out_acc": {e["label"]: e["held_out_acc"] for e in ev},
        "tool_error_ratio_pos_early": _mean([r.get("tool_error_ratio_pos") for r in rl[:half]]),
        "tool_error_ratio_pos_late": _mean([r.get("tool_error_ratio_pos") for r in rl[half:]]),
        "response_len_early": _mean([r.get("response_len_mean") for r in rl[:half]]),
        "response_len_late": _mean([r.get("response_len_mean") for r in rl[half:]]),
        "reward_late": _mean([r.get("reward") for r in rl[half:]]),
        "rl_seconds": sum(r.get("time_step", 0) for r in rl),
        "series": {k: [r.get(k) for r in rl] for k in ("tool_error_ratio_pos", "response_len_mean", "reward")},
    }


def _plot(arms: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["tool_error_ratio_pos", "response_len_mean", "reward"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, k in zip(axes, keys):
        for name, s in arms.items():
            ys = s["series"][k]
            ax.plot(range(1, len(ys) + 1), [y if y is not None else float("nan") for y in ys], marker="o", ms=3, label=name)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/roc_ablation")
    ap.add_argument("--steps", type=int, default=None, help="RL steps per arm (default: the demo's)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from tirl.config import load_config
    from tirl.rl.trainer import train

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    extra = list(args.overrides) + (["stages.0.steps=%d" % args.steps] if args.steps else [])
    t0 = time.perf_counter()
    arms = {}
    for i, algo in enumerate(("grpo_roc", "grpo")):
        cfg = load_config("demo", [f"run.output_dir={out}", f"run.name={algo}", f"rl.algorithm={algo}"] + extra)
        if i == 1:  # start from the first arm's SFT checkpoint: same policy at step 0
            src = out / "grpo_roc" / "checkpoints" / "sft"
            dst = out / algo / "checkpoints"
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst / "sft")
            (dst / "latest").write_text("sft\n")
            from tirl.runs import read_metrics, MetricsWriter

            with MetricsWriter(out / algo / "metrics.jsonl") as w:
                for r in read_metrics(out / "grpo_roc" / "metrics.jsonl"):
                    if r.get("phase") in ("sft", "sft_done") or r.get("label") == "sft":
                        w.write({k: v for k, v in r.items() if k != "time"})
        train(cfg, progress=False)
        arms[algo] = _summary(out / algo)
    _plot(arms, out / "roc_ablation.png")
    roc, plain = arms["grpo_roc"], arms["grpo"]

    def ratio(k):
        a, b = roc.get(k), plain.get(k)
        return None if a is None or not b else a / b

    result = {
        "benchmark": "roc_ablation",
        "seconds": time.perf_counter() - t0,
        "arms": {k: {kk: vv for kk, vv in v.items() if kk != "series"} for k, v in arms.items()},
        "ratio_roc_over_grpo": {k: ratio(k) for k in ("tool_error_ratio_pos_late", "response_len_late", "reward_late")},
        "plot": str(out / "roc_ablation.png"),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
