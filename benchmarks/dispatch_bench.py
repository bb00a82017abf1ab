"""Dispatch benchmark: the policies on simulated paper-scale RL steps, against ``static``.

Scenarios (tirl.dispatch.sim.SCENARIOS): the paper's step — 64 engines, 512 problems × 32
rollouts — with an 8K and a 12K response cap (KV 480K tokens per engine: a 14B model on a
192 GB accelerator shared with the trainer), plus the same two with 800K-token engines
(a dedicated inference GPU) to show where the comparison changes.

Policies: ``static`` (the paper's baseline: a fixed share per engine, by group),
``round_robin``, ``least_requests``, ``kv`` (the paper's rule: book prompt + maximum
response, admit only what fits), ``kv+forecast`` (book the context so far plus the
expected remaining length learnt from the previous step, re-booked every turn) and
``kv+peak`` (admit while the engine's expected peak usage ahead, plus 2 standard
deviations, fits; simulator only) and ``kv@0.5`` (book half of prompt + maximum: a fixed
overcommit). The baseline is ``static`` on the very same workload; the
headline numbers are ratios (makespan of static / makespan of the policy). Several seeds
(different workloads drawn from the same distributions) give a range.

Run: ``.venv/bin/python benchmarks/dispatch_bench.py [--seeds 0,1,2] [--png PATH]``.
Prints one JSON object; writes a PNG (default benchmarks/results/dispatch_bench.png).
The simulation is deterministic; only ``sim_seconds`` depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tirl.dispatch.plot import plot_comparison  # noqa: E402
from tirl.dispatch.sim import sample_workload, scenario_config, simulate  # noqa: E402

POLICIES = {
    "static": {"policy": "static"},
    "round_robin": {"policy": "round_robin"},
    "least_requests": {"policy": "least_requests"},
    "kv": {"policy": "kv"},
    "kv+forecast": {"policy": "kv", "kv_booking": "forecast"},
    "kv+peak": {"policy": "kv", "kv_booking": "peak"},
    "kv@0.5": {"policy": "kv", "kv_reserve_fraction": 0.5},
}
SCENARIOS = {
    "paper-8k": ("paper-8k", {}),
    "paper-12k": ("paper-12k", {}),
    "paper-8k/800K-KV": ("paper-8k", {"engine": {"kv_capacity_tokens": 800_000}}),
    "paper-12k/800K-KV": ("paper-12k", {"engine": {"kv_capacity_tokens": 800_000}}),
}


def run_scenario(name: str, seed: int) -> tuple[dict, dict, float]:
    base, over = SCENARIOS[name]
    cfg = scenario_config(base, seed=seed, **over)
    wl = sample_workload(cfg.workload, seed)
    t0 = time.perf_counter()
    results = {label: simulate(cfg.model_copy(update=upd), wl) for label, upd in POLICIES.items()}
    return cfg.model_dump(), results, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="workload seeds (comma-separated)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="which scenarios")
    ap.add_argument("--png", default=str(ROOT / "benchmarks/results/dispatch_bench.png"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = [s for s in args.scenarios.split(",") if s.strip()]
    out: dict = {"policies": POLICIES, "seeds": seeds, "scenarios": {}}
    first_seed_results = {}
    for name in names:
        per_seed = []
        for seed in seeds:
            cfg, results, secs = run_scenario(name, seed)
            per_seed.append((results, secs))
            if seed == seeds[0]:
                first_seed_results[name] = results
                entry = {"config": cfg, "results": {k: r.summary() for k, r in results.items()}}
        ratios = {
            label: [round(res["static"].makespan_s / res[label].makespan_s, 3) for res, _ in per_seed]
            for label in POLICIES
        }
        kv = [res["kv"] for res, _ in per_seed]
        fc = [res["kv+forecast"] for res, _ in per_seed]
        entry["makespan_speedup_vs_static"] = {k: {"min": min(v), "max": max(v), "per_seed": v} for k, v in ratios.items()}
        entry["busy_fraction"] = {
            label: [round(res[label].busy_fraction, 3) for res, _ in per_seed] for label in POLICIES
        }
        entry["target_kv"] = {
            "busy_ge_0.9": all(r.busy_fraction >= 0.9 for r in kv),
            "no_preemption": all(r.preemptions == 0 for r in kv),
            "makespan_ge_1.3x_static": min(ratios["kv"]) >= 1.3,
        }
        entry["target_kv+forecast"] = {
            "busy_ge_0.9": all(r.busy_fraction >= 0.9 for r in fc),
            "no_preemption": all(r.preemptions == 0 for r in fc),
            "makespan_ge_1.3x_static": min(ratios["kv+forecast"]) >= 1.3,
        }
        entry["sim_seconds_per_policy"] = round(sum(s for _, s in per_seed) / (len(per_seed) * len(POLICIES)), 3)
        out["scenarios"][name] = entry
        print(f"[{name}] kv×{ratios['kv']} kv+forecast×{ratios['kv+forecast']} kv+peak×{ratios['kv+peak']} "
              f"kv@0.5×{ratios['kv@0.5']} rr×{ratios['round_robin']}",
              file=sys.stderr)
    png = plot_comparison(first_seed_results, args.png)
    out["png"] = str(png)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
