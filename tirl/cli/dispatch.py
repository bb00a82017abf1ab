"""`tirl dispatch simulate`: compare dispatch policies on a simulated RL step."""

from __future__ import annotations

import argparse

_POLICIES = ("static", "round_robin", "least_requests", "kv")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dispatch", help="rollout dispatch across engines: `simulate` compares policies")
    ss = p.add_subparsers(dest="dispatch_command", metavar="DISPATCH_COMMAND", required=True)
    s = ss.add_parser(
        "simulate",
        help="simulate dispatch policies on a workload and compare them",
        description="Simulate one RL step's rollouts on K engines under each dispatch policy "
        "(same workload for all) and print makespan, busy fraction, preemption and latency. "
        "Settings: a scenario, then key=value overrides of the simulator config, e.g. "
        "n_engines=8 engine.kv_capacity_tokens=800000 workload.max_response_tokens=12288 "
        "kv_booking=forecast (how kv books: max | forecast | peak). See docs/dispatch.md.",
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="simulator config overrides")
    s.add_argument("--scenario", default="paper-8k", help="paper-8k (default), paper-12k or small")
    s.add_argument("--policies", default=",".join(_POLICIES), help="comma-separated policies to compare")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--out", default=None, help="also write the JSON here")
    s.add_argument("--png", default=None, help="write a comparison plot here")
    s.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    import json
    import time

    from tirl.config import ConfigError, parse_override
    from tirl.dispatch.sim import compare_policies, scenario_config

    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    bad = [p for p in policies if p not in _POLICIES]
    if bad:
        raise ConfigError(f"--policies: unknown {', '.join(bad)}; use some of {', '.join(_POLICIES)}")
    overrides: dict = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        node = overrides
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    from pydantic import ValidationError

    try:
        cfg = scenario_config(args.scenario, **overrides)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(x) for x in e["loc"])
            if e["type"] == "extra_forbidden":
                lines.append(f"  - unknown key {key!r} (see `tirl dispatch simulate --help` and SimConfig)")
            else:
                lines.append(f"  - {key} = {e.get('input')!r}: {e['msg']}")
        raise ConfigError("dispatch simulate: invalid settings:\n" + "\n".join(lines)) from None
    except ValueError as err:  # unknown scenario
        raise ConfigError(f"dispatch simulate: {err}") from None
    t0 = time.perf_counter()
    results = compare_policies(cfg, policies)
    elapsed = time.perf_counter() - t0
    report = {
        "scenario": args.scenario,
        "config": cfg.model_dump(),
        "results": {p: r.summary() for p, r in results.items()},
        "sim_seconds": round(elapsed, 3),
    }
    if "static" in results:
        base = results["static"].makespan_s
        report["makespan_speedup_vs_static"] = {p: round(base / r.makespan_s, 3) for p, r in results.items()}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.png:
        from tirl.dispatch.plot import plot_comparison

        plot_comparison({args.scenario: results}, args.png)
    if args.json:
        print(text)
        return 0
    w = cfg.workload
    print(f"{args.scenario}: {cfg.n_engines} engines × {cfg.engine.kv_capacity_tokens} KV tokens, "
          f"{w.n_problems}×{w.rollouts_per_problem} rollouts, max {w.max_response_tokens} tokens "
          f"(simulated in {elapsed:.1f} s)")
    print(f"{'policy':15s} {'makespan':>9s} {'vs static':>9s} {'busy':>6s} {'kv use':>6s} {'batch':>6s} "
          f"{'preempt':>8s} {'recomputed':>11s} {'lat p50':>8s} {'lat p99':>8s}")
    for p, r in results.items():
        ratio = report.get("makespan_speedup_vs_static", {}).get(p, float("nan"))
        print(f"{p:15s} {r.makespan_s:8.0f}s {ratio:8.2f}× {r.busy_fraction:6.1%} {r.kv_usage_mean:6.1%} "
              f"{r.mean_batch:6.0f} {r.preemptions:8d} {r.recomputed_tokens:11d} "
              f"{r.latency_p50_s:7.0f}s {r.latency_p99_s:7.0f}s")
    return 0
