"""`tirl doctor` check of dispatch: the simulator runs here.

It does not contact engines (that needs the servers up); the builder checks each configured
server when a run starts and names one that does not answer.
"""

from __future__ import annotations

from tirl.health import Check


def checks() -> list[Check]:
    from tirl.dispatch.sim import scenario_config, simulate

    out = []
    r = simulate(scenario_config("small", policy="kv"))
    out.append(Check("dispatch: simulator", r.n_rollouts > 0 and r.preemptions == 0,
                     f"small scenario: {r.n_rollouts} rollouts on {r.n_engines} engines, "
                     f"busy {r.busy_fraction:.0%} (tirl dispatch simulate)"))
    return out
