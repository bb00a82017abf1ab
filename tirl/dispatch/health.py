"""`tirl doctor` checks of dispatch: the simulator runs here, and which engines are configured.

It does not contact engines (that needs a running event loop and the servers up); the
dispatcher itself reports an engine that does not answer, by name, when a run starts.
"""

from __future__ import annotations

from tirl.doctor import Check


def checks() -> list[Check]:
    from tirl.config import load_config
    from tirl.dispatch.sim import scenario_config, simulate

    out = []
    r = simulate(scenario_config("small", policy="kv"))
    out.append(Check("dispatch: simulator", r.n_rollouts > 0 and r.preemptions == 0,
                     f"small scenario: {r.n_rollouts} rollouts on {r.n_engines} engines, "
                     f"busy {r.busy_fraction:.0%} (tirl dispatch simulate)"))
    cfg = load_config().dispatch
    if cfg.engines:
        detail = f"policy {cfg.policy} over {len(cfg.engines)} engines: {', '.join(cfg.engines)}"
    else:
        detail = "no [dispatch] engines in the default config: generation runs on one engine"
    out.append(Check("dispatch: engines", True, detail))
    return out
