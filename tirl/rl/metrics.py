"""Metrics of one RL step, summed over ranks: reward, pass rate, groups kept and dropped,
lengths, tool calls and tool-error ratios (all sampled, kept positives, sampled positives),
format penalty, truncation, and error recovery. The paper's Fig. 4 quantity is
``tool_error_ratio_pos``.

Recovery (over sampled trajectories, as ``tirl.analysis`` defines it): ``frac_with_failure``
= share with at least one failed call; ``recovery_rate`` = of those, the share answered
correctly; ``call_recovery_rate`` = of those, the share with a successful call after the
first failed one (the tool was got working again)."""

from __future__ import annotations

from tirl.rl import distributed as D
from tirl.rl.rollouts import Collected, format_penalty


def _call_recovered(traj) -> bool:
    calls = [c for c in traj.tool_calls if c.failed or (c.result is not None and c.result.ok)]
    first = next((i for i, c in enumerate(calls) if c.failed), None)
    return first is not None and any(not c.failed for c in calls[first + 1:])


def step_metrics(c: Collected, step: int, stage: str) -> dict:
    sampled = [t for t in c.sampled if t.reward is not None]
    kept = [t for g in c.groups for t in g]
    pos = [t for t in kept if t.reward == 1.0]
    sampled_pos = [t for t in sampled if t.reward == 1.0]
    (n, rsum, lsum, calls, errs, pcalls, perrs, spcalls, sperrs, fpen, gs, gd, gk, infra, nk,
     plen, npos, trunc) = D.all_sum([
        float(len(sampled)), float(sum(t.reward for t in sampled)),
        float(sum(len(t.response_ids) for t in sampled)),
        float(sum(t.num_tool_calls for t in sampled)), float(sum(t.num_tool_errors for t in sampled)),
        float(sum(t.num_tool_calls for t in pos)), float(sum(t.num_tool_errors for t in pos)),
        float(sum(t.num_tool_calls for t in sampled_pos)), float(sum(t.num_tool_errors for t in sampled_pos)),
        float(sum(format_penalty(t) for t in sampled)),
        float(c.groups_sampled), float(c.groups_dropped), float(len(c.groups)),
        float(c.infra_dropped), float(len(kept)),
        float(sum(len(t.response_ids) for t in pos)), float(len(pos)),
        float(sum(1 for t in sampled if t.truncated)),
    ])
    failed = [t for t in sampled if t.num_tool_errors > 0]
    nf, nf_ok, nf_rec = D.all_sum([float(len(failed)), float(sum(1 for t in failed if t.reward == 1.0)),
                                   float(sum(1 for t in failed if _call_recovered(t)))])
    lmax = max(D.all_gather_objects(max((len(t.response_ids) for t in sampled), default=0)))
    by_group: dict[str, list] = {}
    for t in sampled:
        by_group.setdefault(t.problem_id, []).append(t.reward)
    p_pass, p_n = D.all_sum([float(sum(1 for r in by_group.values() if max(r) > 0)), float(len(by_group))])
    return {
        "phase": "rl", "step": step, "stage": stage,
        "reward": rsum / max(1.0, n),
        "pass_rate": p_pass / max(1.0, p_n),  # share of sampled groups with a correct rollout
        "groups_sampled": int(gs), "groups_dropped": int(gd), "groups_kept": int(gk),
        "refills": c.refills, "infra_dropped": int(infra),
        "response_len_mean": lsum / max(1.0, n), "response_len_max": lmax,
        "response_len_pos": plen / npos if npos else None,
        "tool_calls_per_traj": calls / max(1.0, n),
        "tool_error_ratio": errs / calls if calls else None,
        "tool_error_ratio_pos": perrs / pcalls if pcalls else None,
        "tool_error_ratio_pos_sampled": sperrs / spcalls if spcalls else None,
        "format_penalty": fpen / max(1.0, n), "truncated_frac": trunc / max(1.0, n),
        "trajectories_kept": int(nk),
        "frac_with_failure": nf / max(1.0, n),
        "recovery_rate": nf_ok / nf if nf else None,
        "call_recovery_rate": nf_rec / nf if nf else None,
    }


def trajectory_record(traj, step: int, stage: str) -> dict:
    """A trajectory as saved under trajectories/: its fields plus what RL made of it."""
    rec = traj.to_dict()
    rec.update({"step": step, "stage": stage, "kept": traj.meta.get("kept"),
                "advantage": traj.meta.get("advantage"), "roc_penalty": traj.meta.get("roc_penalty"),
                "policy_version": traj.meta.get("policy_version", step - 1)})
    return rec
