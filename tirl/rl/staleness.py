"""Off-policy bookkeeping for rollouts made by older weights (bounded-staleness async RL).

Pure functions, no I/O:

* :func:`trajectory_version` — the policy version that generated a trajectory: the oldest
  version any of its turns was generated with (``Turn.weight_version``, stamped by the
  server), so a trajectory that spanned an update counts as old as its oldest token.
* :func:`drop_stale` — with the trainer at version ``t`` and ``max_staleness = k``, every
  trajectory of version ``v < t − k`` is dropped (counted); a group left with fewer than two
  trajectories or with all-equal rewards carries no signal and is dropped too.
* :func:`staleness_histogram` — ``{t − v: count}`` over the trajectories used.
* :func:`truncated_is_weights` — the truncated importance-sampling weight of each token
  (docs/disagg.md)::

      w_t = min( π_old(y_t) / μ(y_t), C ) = min( exp(log π_old − log μ), C )

  where ``μ`` is the behaviour policy (the server's log-probs, recorded per token at
  sampling time), ``π_old`` the trainer's weights at the start of the update (the
  proximal policy of the clipped ratio) and ``C`` the cap (``rollout.is_cap``). The
  weight multiplies each token's clipped loss; it is a constant (no gradient). Because
  ``w > 0``, weighting the loss equals weighting the token's advantage, which is how
  :func:`tirl.rl.update.policy_update` applies it.

What it does not do: decide when rollouts run or weights are pushed (the trainer does).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def trajectory_version(traj: Any) -> int | None:
    """The oldest integer weight version among the trajectory's turns; None if none is known."""
    versions = []
    for t in traj.turns:
        v = getattr(t, "weight_version", None)
        if v is None:
            continue
        try:
            versions.append(int(v))
        except (TypeError, ValueError):
            continue  # a label that is not a step number (e.g. SGLang's "default")
    return min(versions) if versions else None


def staleness_histogram(versions: Sequence[int | None], trainer_version: int) -> dict[int, int]:
    """``{trainer_version − v: count}`` over the known versions."""
    out: dict[int, int] = {}
    for v in versions:
        if v is not None:
            d = trainer_version - v
            out[d] = out.get(d, 0) + 1
    return dict(sorted(out.items()))


def drop_stale(groups: list[list], trainer_version: int, max_staleness: int) -> tuple[list[list], int, int]:
    """(kept groups, trajectories dropped as stale, groups dropped) — see the module docstring.

    A trajectory's version is ``traj.meta["policy_version"]`` (unknown = kept)."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness={max_staleness} must be >= 0")
    kept, dropped, groups_dropped = [], 0, 0
    for g in groups:
        fresh = [t for t in g if t.meta.get("policy_version") is None
                 or trainer_version - int(t.meta["policy_version"]) <= max_staleness]
        dropped += len(g) - len(fresh)
        if len(fresh) == len(g):
            kept.append(g)
        elif len(fresh) >= 2 and len({t.reward for t in fresh}) > 1:
            kept.append(fresh)
        else:
            groups_dropped += 1
    return kept, dropped, groups_dropped


def truncated_is_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
                         mask: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(exp(old − behaviour), cap)`` on masked tokens, 0 elsewhere (no gradient)."""
    if cap < 1.0:
        raise ValueError(f"the importance-sampling cap must be >= 1, got {cap}")
    if old_logprobs.shape != behaviour_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"shapes differ: old {tuple(old_logprobs.shape)}, behaviour "
                         f"{tuple(behaviour_logprobs.shape)}, mask {tuple(mask.shape)}")
    with torch.no_grad():
        w = torch.exp((old_logprobs - behaviour_logprobs).clamp(max=30.0)).clamp(max=cap)
        return w * mask.to(w.dtype)
