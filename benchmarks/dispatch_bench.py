"""Dispatch benchmark: the policies on simulated paper-scale RL steps, against ``static``.

Scenarios (tirl.dispatch.sim.SCENARIOS): the paper's step — 64 engines, 512 problems × 32
rollouts — with an 8K and a 12K response cap (KV 480K tokens per engine: a 14B model on a
192 GB accelerator shared with the trainer); ``--scenarios`` adds the same two with
800K-token engines (``paper-8k/800K-KV``, ``paper-12k/800K-KV``: a dedicated inference GPU).

Policies: ``static`` (the paper's baseline: a fixed share per engine, by group),
``round_robin``, ``kv`` = the default (``SimConfig()``: kv with peak booking — each rollout
books the most it is expected to hold at any future point, 2.5 standard deviations of the
engine's summed bookings kept free, growth since the last booking read from live usage —
and longest_first order: waiting rollouts of the problems shown to be long go first, each
booked from its problem's lengths, and a problem's rollouts spread over engines),
``kv+peak+fifo@z2`` (the previous default: the same booking in arrival order, 2 standard
deviations, no spreading), ``kv+curve`` (the default with ``kv_bound = "curve"``: an engine
is bounded by the maximum over time of its rollouts' summed expected usage instead of the
sum of their peaks),
``kv+max`` (the paper's rule: book prompt + maximum response), ``kv+forecast`` (book the
expected final size), ``kv+peak@z1`` (the default with 1 standard deviation: how much the
margin costs). More with ``--policies`` (``least_requests``, ``kv@0.5``). The baseline is
``static`` on the very same workload; the headline numbers are ratios (makespan of static
/ makespan of the policy), per seed (different workloads drawn from the same
distributions), and ``default_vs_best_of_rr_and_forecast`` compares the default with the
better of round_robin and kv+forecast seed by seed (≥ 1 = at least as good).

Run: ``.venv/bin/python benchmarks/dispatch_bench.py [--seeds 0,1,2] [--png PATH]``
(about 5 minutes on a loaded 2-core machine). Prints one JSON object; writes a PNG
(default benchmarks/results/dispatch_bench.png). The simulation is deterministic; only
``sim_seconds`` depends on the machine.
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
from tirl.dispatch.config import SimConfig  # noqa: E402
from tirl.dispatch.sim import sample_workload, scenario_config, simulate  # noqa: E402

ALL_POLICIES = {
    "static": {"policy": "static"},
    "round_robin": {"policy": "round_robin"},
    "least_requests": {"policy": "least_requests"},
    "kv": {},  # the default: whatever SimConfig() selects
    "kv+max": {"policy": "kv", "kv_booking": "max"},
    "kv+forecast": {"policy": "kv", "kv_booking": "forecast"},
    "kv+peak@z1": {"policy": "kv", "kv_booking": "peak", "kv_peak_z": 1.0},
    "kv+peak+fifo@z2": {"policy": "kv", "kv_booking": "peak", "kv_order": "fifo", "kv_peak_z": 2.0,
                        "kv_spread_groups": False},
    "kv+curve": {"policy": "kv", "kv_booking": "peak", "kv_bound": "curve"},
    "kv@0.5": {"policy": "kv", "kv_booking": "max", "kv_reserve_fraction": 0.5},
}
DEFAULT_POLICIES = (
    "static", "round_robin", "kv", "kv+max", "kv+forecast", "kv+peak+fifo@z2", "kv+curve", "kv+peak@z1",
)
SCENARIOS = {
    "paper-8k": ("paper-8k", {}),
    "paper-12k": ("paper-12k", {}),
    "paper-8k/800K-KV": ("paper-8k", {"engine": {"kv_capacity_tokens": 800_000}}),
    "paper-12k/800K-KV": ("paper-12k", {"engine": {"kv_capacity_tokens": 800_000}}),
}


def run_scenario(name: str, seed: int, policies: dict[str, dict]) -> tuple[dict, dict, float]:
    base, over = SCENARIOS[name]
    cfg = scenario_config(base, seed=seed, **over)
    wl = sample_workload(cfg.workload, seed)
    t0 = time.perf_counter()
    results = {label: simulate(cfg.model_copy(update=upd), wl) for label, upd in policies.items()}
    return cfg.model_dump(), results, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="workload seeds (comma-separated)")
    ap.add_argument("--scenarios", default="paper-8k,paper-12k", help=f"some of {', '.join(SCENARIOS)}")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help=f"some of {', '.join(ALL_POLICIES)}")
    ap.add_argument("--png", default=str(ROOT / "benchmarks/results/dispatch_bench.png"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = [s for s in args.scenarios.split(",") if s.strip()]
    labels = [p for p in args.policies.split(",") if p.strip()]
    bad = [x for x in names if x not in SCENARIOS] + [x for x in labels if x not in ALL_POLICIES]
    if bad:
        ap.error(f"unknown {', '.join(bad)}; scenarios: {', '.join(SCENARIOS)}; policies: {', '.join(ALL_POLICIES)}")
    if "static" not in labels:
        labels.insert(0, "static")  # the baseline of every ratio
    policies = {label: ALL_POLICIES[label] for label in labels}
    default = SimConfig()
    out: dict = {
        "default": {"policy": default.policy, "kv_booking": default.kv_booking, "kv_peak_z": default.kv_peak_z,
                    "kv_margin": default.kv_margin, "kv_order": default.kv_order, "kv_bound": default.kv_bound,
                    "kv_spread_groups": default.kv_spread_groups},
        "policies": policies,
        "seeds": seeds,
        "scenarios": {},
    }
    first_seed_results = {}
    for name in names:
        per_seed = []
        for seed in seeds:
            cfg, results, secs = run_scenario(name, seed, policies)
            per_seed.append((results, secs))
            if seed == seeds[0]:
                first_seed_results[name] = results
                entry = {"config": cfg, "results": {k: r.summary() for k, r in results.items()}}
        ratios = {
            label: [round(res["static"].makespan_s / res[label].makespan_s, 3) for res, _ in per_seed]
            for label in policies
        }
        entry["makespan_speedup_vs_static"] = {k: {"min": min(v), "max": max(v), "per_seed": v} for k, v in ratios.items()}
        entry["preemptions"] = {label: [res[label].preemptions for res, _ in per_seed] for label in policies}
        entry["busy_fraction"] = {
            label: [round(res[label].busy_fraction, 3) for res, _ in per_seed] for label in policies
        }
        entry["kv_usage_mean"] = {
            label: [round(res[label].kv_usage_mean, 3) for res, _ in per_seed] for label in policies
        }
        if {"kv", "round_robin", "kv+forecast"} <= set(policies):
            best = [max(a, b) for a, b in zip(ratios["round_robin"], ratios["kv+forecast"])]
            entry["default_vs_best_of_rr_and_forecast"] = [round(d / b, 3) for d, b in zip(ratios["kv"], best)]
        if "kv" in policies:
            kv = [res["kv"] for res, _ in per_seed]
            entry["target_default"] = {
                "busy_ge_0.9": all(r.busy_fraction >= 0.9 for r in kv),
                "no_preemption": all(r.preemptions == 0 for r in kv),
                "makespan_ge_1.3x_static": min(ratios["kv"]) >= 1.3,
            }
        entry["sim_seconds_per_policy"] = round(sum(s for _, s in per_seed) / (len(per_seed) * len(policies)), 3)
        out["scenarios"][name] = entry
        print(f"[{name}] " + " ".join(f"{k}×{v}" for k, v in ratios.items()), file=sys.stderr)
    png = plot_comparison(first_seed_results, args.png)
    out["png"] = str(png)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
