"""Disaggregated RL benchmark: the demo model trained in-process vs on 2 inference servers
(synchronous weight sync every step) vs on 2 servers with bounded staleness k = 1 (with
in-flight turns finishing on the old weights, ``rollout.in_flight = "finish"``, or paused
and continued on the new ones, ``"pause"``).

One run, one machine: first the demo's SFT (once, in-process) gives a starting checkpoint;
then each mode trains ``--steps`` GRPO-RoC steps from it, once per ``--seeds`` seed (the
modes interleaved, so a slow spell of the shared machine hits all of them), and its
held-out accuracy (greedy, the demo's held-out set) is measured after the last step.
Reported: steps/minute of each mode and the ratios, per seed, to in-process and to
disaggregated-sync (the baseline of the same run); the most async can give here
(``async_ceiling_vs_disagg_sync``: a synchronous step's time over the longer of its
rollouts and its update + push, from the synchronous run's own split); held-out accuracy (mean, sd over seeds);
the time split (generation, update, trainer idle); and the weight sync of the demo model to
2 servers on loopback (seconds per push and seconds per GB, `disk` backend).

The servers are `tirl serve` processes on free loopback ports.

Disaggregation means separate hardware for inference and training, so by default the two
servers share the first CPU core and the trainer (with its sandbox and grader processes)
runs on the others while it trains on the servers; in-process, the trainer has every core.
Without pinning (``--no-pin``) three processes fight over the same cores, and no overlap of
rollouts and updates can pay: there is nothing idle to overlap.

Run: ``.venv/bin/python benchmarks/disagg_bench.py [--steps 20] [--seeds 0,1,2] [--modes ...]
[--sft-from DIR] [--out DIR]``. Prints one JSON object. On a shared 2-core machine the three
processes compete for the same cores, so disaggregation is measured at its least
favourable; the ratios, not the seconds, are the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rl_records(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return recs


def train_mode(out: Path, name: str, model_dir: Path, steps: int, extra: list[str]) -> dict:
    from tirl.config import load_config
    from tirl.rl.trainer import train

    cfg = load_config("demo", [f"run.output_dir={out}", f"run.name={name}", f"model.path={model_dir}",
                               "sft.enabled=false", f"stages.0.steps={steps}", "rl.checkpoint_every=1000",
                               "rl.plot_every=1000", "model.served_name=tiny"] + extra)
    t0 = time.perf_counter()
    res = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    recs = rl_records(out / name)
    rl = [r for r in recs if r.get("phase") == "rl"]
    evals = [r for r in recs if r.get("phase") == "eval"]
    step_s = sum(r["time_step"] for r in rl)
    out_rec = {"steps": len(rl), "rl_seconds": round(step_s, 2), "wall_seconds": round(wall, 1),
               "steps_per_minute": round(60 * len(rl) / max(1e-9, step_s), 3),
               "held_out_acc_start": evals[0]["held_out_acc"] if evals else None,
               "held_out_acc": evals[-1]["held_out_acc"] if evals else None,
               "reward_mean": round(sum(r["reward"] for r in rl) / max(1, len(rl)), 4),
               "updates": sum(1 for r in rl if r.get("policy_tokens")),  # steps that had groups with signal
               "trainer_idle_s": round(sum(r.get("time_trainer_idle", 0.0) for r in rl), 2),
               "update_s": round(sum(r.get("time_update", 0.0) for r in rl), 2),
               "generation_s": round(sum(r.get("time_generation", 0.0) for r in rl), 2)}
    if any("sync_seconds" in r for r in rl):
        syncs = [r for r in rl if "sync_seconds" in r]
        out_rec.update({
            "sync_seconds_mean": round(sum(r["sync_seconds"] for r in syncs) / len(syncs), 4),
            "sync_bytes": syncs[-1]["sync_bytes"],
            "sync_s_per_gb": round(sum(r["sync_s_per_gb"] for r in syncs) / len(syncs), 3),
            "rollout_idle_s": round(sum(r.get("time_rollout_idle", 0.0) for r in rl), 2),
            "stale_dropped": sum(r.get("stale_dropped", 0) for r in rl),
            "staleness_max": max((r.get("staleness_max") or 0) for r in rl)})
    assert res["global_step"] == len(rl)
    return out_rec


MODES = ("in_process", "disagg_sync", "disagg_async_k1", "disagg_async_k1_pause")


def summarize(rs: list[dict]) -> dict:
    """Mean (and spread) over seeds of one mode's runs."""
    import statistics

    out: dict = {"per_seed": rs}
    for key in ("steps_per_minute", "held_out_acc", "held_out_acc_start", "reward_mean", "trainer_idle_s",
                "update_s", "generation_s", "rl_seconds"):
        vals = [r[key] for r in rs if r.get(key) is not None]
        if vals:
            out[key] = round(statistics.fmean(vals), 4)
            if len(vals) > 1:
                out[key + "_sd"] = round(statistics.stdev(vals), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="RL steps per mode (the demo's: 20)")
    ap.add_argument("--sft-size", type=int, default=4000, help="SFT examples (the demo's: 4000)")
    ap.add_argument("--sft-epochs", type=int, default=8, help="SFT epochs (the demo's: 8)")
    ap.add_argument("--problems", type=int, default=16, help="rl.problems_per_step (the demo's: 16)")
    ap.add_argument("--held-out", type=int, default=100, help="data.held_out_size (the demo's: 100)")
    ap.add_argument("--tasks", default="", help="data.tasks of the RL steps, comma-separated (default: the demo's)")
    ap.add_argument("--sft-from", help="start from this SFT checkpoint instead of running SFT")
    ap.add_argument("--seeds", default="0", help="RL seeds, comma-separated (each mode runs once per seed)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin: by default the servers run on the first core and the disaggregated "
                         "trainer on the others, as separate inference and training hardware would")
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    a = ap.parse_args()
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    modes = [m for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {MODES}")
    import torch

    torch.set_num_threads(1)
    from tirl.config import load_config
    from tirl.rl.trainer import train

    tmp = tempfile.TemporaryDirectory() if not a.out else None
    out = Path(a.out or tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"rl.problems_per_step={a.problems}", f"data.held_out_size={a.held_out}"]
    if a.tasks:
        common.append("data.tasks=[" + ",".join(f'"{t}"' for t in a.tasks.split(",")) + "]")
    t0 = time.perf_counter()
    if a.sft_from:
        sft_dir = Path(a.sft_from)
    else:
        train(load_config("demo", [f"run.output_dir={out}", "run.name=sft", f"sft.size={a.sft_size}",
                                   f"sft.epochs={a.sft_epochs}", "stages.0.steps=0"] + common), progress=False)
        sft_dir = out / "sft" / "checkpoints" / "sft"
    result: dict = {"benchmark": "disagg", "steps": a.steps, "tasks": a.tasks or "demo", "seeds": seeds,
                    "sft_seconds": round(time.perf_counter() - t0, 1), "runs": {}}
    runs = result["runs"]
    from tirl.engines.launch import LocalServers, launch_servers

    import os

    all_cores = os.sched_getaffinity(0)
    pin = a.pin and len(all_cores) >= 2
    server_cores, trainer_cores = ({min(all_cores)}, all_cores - {min(all_cores)}) if pin else (None, all_cores)
    result["pinned"] = ({"servers": sorted(server_cores), "trainer_when_disaggregated": sorted(trainer_cores)}
                        if pin else None)
    servers = (launch_servers(sft_dir, 2, out, max_batch=64, cpus=server_cores)
               if any(m != "in_process" for m in modes) else LocalServers([], []))
    with servers:
        urls = servers.urls
        engines = "dispatch.engines=[" + ",".join(f'"{u}"' for u in urls) + "]"
        extra = {"in_process": [], "disagg_sync": [engines],
                 "disagg_async_k1": [engines, "rollout.max_staleness=1"],
                 "disagg_async_k1_pause": [engines, "rollout.max_staleness=1", "rollout.in_flight=pause"]}
        for seed in seeds:
            for m in modes:  # interleaved: a slow spell of the shared machine hits every mode
                # in-process: the trainer on every core; disaggregated: off the servers' cores
                os.sched_setaffinity(0, all_cores if m == "in_process" else trainer_cores)
                runs.setdefault(m, []).append(train_mode(out, f"{m}_s{seed}", sft_dir, a.steps,
                                                         common + extra[m] + [f"run.seed={seed}"]))
        os.sched_setaffinity(0, all_cores)
    result["modes"] = {m: summarize(rs) for m, rs in runs.items()}
    spm = {m: [r["steps_per_minute"] for r in rs] for m, rs in runs.items()}
    result["ratios"] = {}  # per seed, then the mean
    for num, den in [("disagg_sync", "in_process"), ("disagg_async_k1", "disagg_sync"),
                     ("disagg_async_k1_pause", "disagg_sync"), ("disagg_async_k1_pause", "in_process")]:
        if num in spm and den in spm:
            per = [round(x / y, 3) for x, y in zip(spm[num], spm[den])]
            result["ratios"][f"{num}_vs_{den}"] = {"per_seed": per, "mean": round(sum(per) / len(per), 3)}
    if "disagg_sync" in runs:
        # what overlapping one step's rollouts with the previous update can give at best: a
        # synchronous step is rollouts + update + push, an overlapped one the longer of the two
        ceil = []
        for r in runs["disagg_sync"]:
            roll = r["rl_seconds"] - r["update_s"] - r.get("sync_seconds_mean", 0.0) * r["steps"]
            other = r["update_s"] + r.get("sync_seconds_mean", 0.0) * r["steps"]
            ceil.append(round(r["rl_seconds"] / max(roll, other), 3))
        result["async_ceiling_vs_disagg_sync"] = {"per_seed": ceil, "mean": round(sum(ceil) / len(ceil), 3)}
    syncs = [r for m, rs in runs.items() if m != "in_process" for r in rs if "sync_seconds_mean" in r]
    if syncs:
        result["weight_sync"] = {"seconds_per_push": round(sum(r["sync_seconds_mean"] for r in syncs) / len(syncs), 4),
                                 "bytes": syncs[-1]["sync_bytes"],
                                 "s_per_gb": round(sum(r["sync_s_per_gb"] for r in syncs) / len(syncs), 3),
                                 "servers": 2}
    print(json.dumps(result, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
