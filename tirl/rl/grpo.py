"""GRPO-RoC as pure functions: RoC penalties and down-sampling, group advantages, the loss.

Everything here works on plain lists and tensors, does no I/O and keeps no state, so each
function can be tested against hand-worked examples from the paper's equations
(rStar2-Agent, arXiv 2508.20722, §2.2.3):

* :func:`roc_penalty` — Eq. 5–6: ``p_err`` (failed tool calls / tool calls; 0.5 without
  calls) and ``p_format`` (1 without ``<answer>``, else ``min(1, (#answer − 1) / turns)``).
* :func:`resample_on_correct` — Resample-on-Correct: 2G rollouts of a problem down to G.
* :func:`group_advantages` — Eq. 4: ``(r − mean) / std`` within a group (or mean-only).
* :func:`policy_loss` — Eq. 7 with clip-higher and the release's dual-clip, averaged over
  all policy tokens of the batch (token-level), optional KL and entropy terms.

What it does not do: it never looks at text (the trainer counts tool failures from typed
sandbox outcomes and ``<answer>`` blocks exactly, then calls these) and it knows nothing
about infrastructure errors — the trainer removes those trajectories before RoC.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, Sequence

import torch


# ---------------------------------------------------------------------------------------
# RoC penalties (Eq. 5, 6)


def roc_penalty(num_tool_calls: int, num_failed_calls: int, num_answers: int, num_turns: int) -> float:
    """``p = p_err + p_format`` of one trajectory (Eq. 5–6).

    * ``p_err = num_failed_calls / num_tool_calls``; 0.5 when there are no tool calls
      (the paper: a trace that never uses the tool gets a default penalty).
    * ``p_format = 1`` when there is no ``<answer>``; else ``min(1, (num_answers − 1) / num_turns)``.

    Failed calls are parse errors, exceptions, timeouts and other non-``ok`` outcomes,
    counted from typed results by the caller (``ToolCall.failed``).
    """
    if num_tool_calls < 0 or num_failed_calls < 0 or num_failed_calls > num_tool_calls:
        raise ValueError(
            f"num_failed_calls={num_failed_calls} must be within 0..num_tool_calls={num_tool_calls}"
        )
    if num_turns < 1:
        raise ValueError(f"num_turns={num_turns}: a trajectory has at least one assistant turn")
    p_err = 0.5 if num_tool_calls == 0 else num_failed_calls / num_tool_calls
    p_format = 1.0 if num_answers <= 0 else min(1.0, (num_answers - 1) / num_turns)
    return p_err + p_format


# ---------------------------------------------------------------------------------------
# Resample on correct


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def roc_split(n_pos: int, n_neg: int, group_size: int, min_pos: int = 2, min_neg: int = 2) -> tuple[int, int]:
    """How many positives and negatives RoC keeps out of ``n_pos + n_neg`` rollouts.

    Both classes are down-sampled in proportion (the paper keeps half of each when
    2G → G), rounding half up for the positives. Then, in order of priority:

    1. a group that had both classes keeps both (at least one of each, when
       ``group_size ≥ 2``): a one-class group has zero advantages and teaches nothing;
    2. at least ``min_pos`` positives and ``min_neg`` negatives where available; when both
       minimums do not fit in ``group_size``, the larger one gives way first (ties: the
       negatives' minimum);
    3. never more of a class than exist.

    When at most ``group_size`` rollouts exist (e.g. infra failures were dropped), all are kept.
    """
    if n_pos < 0 or n_neg < 0:
        raise ValueError(f"n_pos={n_pos} and n_neg={n_neg} must be ≥ 0")
    n = n_pos + n_neg
    if n <= group_size:
        return n_pos, n_neg
    floor = 1 if (n_pos and n_neg and group_size >= 2) else 0  # rule 1
    lo_pos, lo_neg = max(min(min_pos, n_pos), floor), max(min(min_neg, n_neg), floor)
    while lo_pos + lo_neg > group_size:  # rule 2 gives way; never below the floor (2·floor ≤ G)
        if lo_neg >= lo_pos and lo_neg > floor:
            lo_neg -= 1
        else:
            lo_pos -= 1
    k_pos = min(max(_round_half_up(n_pos * group_size / n), lo_pos), group_size - lo_neg)
    k_pos = min(k_pos, n_pos)
    k_neg = min(group_size - k_pos, n_neg)
    k_pos = min(group_size - k_neg, n_pos)
    return k_pos, k_neg


def _weighted_sample_without_replacement(
    items: Sequence[int], weights: Sequence[float], k: int, rng: random.Random
) -> list[int]:
    pool = list(items)
    w = list(weights)
    out: list[int] = []
    for _ in range(min(k, len(pool))):
        total = sum(w)
        u = rng.random() * total
        acc = 0.0
        j = len(pool) - 1
        for i, wi in enumerate(w):
            acc += wi
            if u < acc:
                j = i
                break
        out.append(pool.pop(j))
        w.pop(j)
    return out


def resample_on_correct(
    rewards: Sequence[float],
    penalties: Sequence[float],
    group_size: int,
    *,
    mode: Literal["weighted", "topk"] = "weighted",
    min_pos: int = 2,
    min_neg: int = 2,
    rng: random.Random | None = None,
    eps: float = 0.05,
) -> list[int]:
    """Resample-on-Correct (§2.2.3): indices of the ``group_size`` rollouts to keep.

    ``rewards`` are 0/1 per rollout of one problem (oversampled, typically 2G) and
    ``penalties`` the matching :func:`roc_penalty` values (only the positives' are used).

    * Negatives (reward ≤ 0): kept uniformly at random — diverse failures stay.
    * Positives: ``mode="weighted"`` (the paper) samples without replacement with
      probability ∝ ``1 / (p + eps)`` (``eps`` keeps a penalty of 0 finite: such a trace
      is then ``(0.5 + eps) / eps`` times likelier than one with ``p = 0.5``);
      ``mode="topk"`` (the release) keeps the lowest penalties, ties by index.
    * Class sizes come from :func:`roc_split`: a group that had both classes keeps both
      (``group_size ≥ 2``), so RoC never turns a group with a learning signal into one without.

    Returns sorted indices into ``rewards``.
    """
    if len(rewards) != len(penalties):
        raise ValueError(f"{len(rewards)} rewards but {len(penalties)} penalties; give one per rollout")
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be ≥ 1")
    if mode not in ("weighted", "topk"):
        raise ValueError(f"mode={mode!r}: use 'weighted' (the paper's) or 'topk' (the release's)")
    rng = rng or random.Random(0)
    pos = [i for i, r in enumerate(rewards) if r > 0]
    neg = [i for i, r in enumerate(rewards) if r <= 0]
    k_pos, k_neg = roc_split(len(pos), len(neg), group_size, min_pos, min_neg)
    kept_neg = rng.sample(neg, k_neg) if k_neg < len(neg) else list(neg)
    if k_pos >= len(pos):
        kept_pos = list(pos)
    elif mode == "topk":
        kept_pos = sorted(pos, key=lambda i: (penalties[i], i))[:k_pos]
    else:
        weights = [1.0 / (max(0.0, penalties[i]) + eps) for i in pos]
        kept_pos = _weighted_sample_without_replacement(pos, weights, k_pos, rng)
    return sorted(kept_pos + kept_neg)


# ---------------------------------------------------------------------------------------
# Advantages (Eq. 4)


def group_advantages(
    rewards: Sequence[float] | torch.Tensor,
    mode: Literal["mean_std", "mean"] = "mean_std",
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages of one group (Eq. 4): ``Â_i = (r_i − mean(r)) / std(r)``.

    ``std`` is the sample standard deviation (Bessel-corrected, as ``torch.std`` and the
    release compute it); ``eps`` guards a zero std (an all-equal group, which the trainer
    drops anyway, gets advantages of 0). ``mode="mean"`` omits the division (Dr. GRPO).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.ndim != 1 or r.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D sequence, got shape {tuple(r.shape)}")
    centred = r - r.mean()
    if mode == "mean":
        return centred
    if mode != "mean_std":
        raise ValueError(f"mode={mode!r}: use 'mean_std' or 'mean'")
    std = r.std() if r.numel() > 1 else torch.tensor(0.0)
    return centred / (std + eps)


# ---------------------------------------------------------------------------------------
# Policy loss (Eq. 7)


@dataclass
class LossStats:
    """Sums over the tokens given (divide by the token count for means)."""

    tokens: float
    clipped: float  # tokens where the clipped term was the active one
    dual_clipped: float  # tokens where the dual-clip bound was the active one
    ratio_sum: float
    entropy_sum: float
    kl_sum: float


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float = 3.0,
    num_tokens: float | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """Token-level clipped policy-gradient loss (Eq. 7, clip-higher, dual-clip).

    All tensors have the same shape (``[batch, time]``); ``advantages`` may also be
    ``[batch]`` (one per sequence, broadcast over its tokens). ``mask`` is 1 on tokens the
    policy sampled and 0 on tool-response, template and padding tokens. Per token, with
    ``ρ = exp(logprobs − old_logprobs)`` and advantage ``A``::

        ℓ = max(−A·ρ, −A·clip(ρ, 1 − clip_low, 1 + clip_high))       (clip-higher)
        ℓ = min(ℓ, −A·dual_clip)   where A < 0, when dual_clip > 0     (dual-clip)

    The loss is ``Σ mask·ℓ / num_tokens``: ``num_tokens`` is the number of policy tokens
    of the *whole* batch (all micro-batches and ranks), so accumulating micro-batches gives
    exactly the token-level mean of the paper; default = ``mask.sum()``. Optional terms:
    ``− entropy_coef · entropy`` and ``kl_coef · KL`` (the k3 estimator against
    ``ref_logprobs``). Both are off by default, as in the paper.

    ``entropy`` is only needed when ``entropy_coef > 0`` (it may be detached when only
    logged; ``stats.entropy_sum`` is then its masked sum, else 0): compute it with
    ``tirl.rl.logprobs.token_logprobs(..., with_entropy=True)`` — never over the full
    ``[tokens × vocab]`` logits. A coefficient without an entropy, or a term without its
    input, raises instead of being ignored.
    """
    if advantages.ndim == logprobs.ndim - 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    if not (logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape):
        raise ValueError(
            "policy_loss needs equal shapes: logprobs "
            f"{tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, "
            f"advantages {tuple(advantages.shape)}, mask {tuple(mask.shape)}"
        )
    if dual_clip and dual_clip <= 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1 (or 0 to disable)")
    if entropy_coef and entropy is None:
        raise ValueError(
            f"entropy_coef={entropy_coef} but no entropy was given; pass entropy= (from "
            "token_logprobs(..., with_entropy=True)) or set entropy_coef = 0"
        )
    if entropy is not None and entropy.shape != logprobs.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} must match logprobs {tuple(logprobs.shape)}")
    if kl_coef and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} but no ref_logprobs were given; pass them or set kl_coef = 0")
    mask = mask.to(logprobs.dtype)
    denom = float(num_tokens) if num_tokens is not None else float(mask.sum().item())
    denom = max(denom, 1.0)
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_tok = torch.maximum(pg1, pg2)
    clipped = (pg2 > pg1).to(mask.dtype)
    dual = torch.zeros_like(mask)
    if dual_clip:
        bound = -advantages * dual_clip
        use_dual = (advantages < 0) & (per_tok > bound)
        per_tok = torch.where(use_dual, bound, per_tok)
        dual = use_dual.to(mask.dtype)
    loss_tok = per_tok
    ent_sum = 0.0
    if entropy is not None:
        ent_sum = float((entropy.detach() * mask).sum().item())
        if entropy_coef:
            loss_tok = loss_tok - entropy_coef * entropy
    kl_sum = 0.0
    if ref_logprobs is not None:
        log_r = ref_logprobs - logprobs
        kl = torch.exp(log_r) - log_r - 1.0
        kl_sum = float((kl.detach() * mask).sum().item())
        if kl_coef:
            loss_tok = loss_tok + kl_coef * kl
    loss = (loss_tok * mask).sum() / denom
    stats = LossStats(
        tokens=float(mask.sum().item()),
        clipped=float((clipped * mask).sum().item()),
        dual_clipped=float((dual * mask).sum().item()),
        ratio_sum=float((ratio.detach() * mask).sum().item()),
        entropy_sum=ent_sum,
        kl_sum=kl_sum,
    )
    return loss, stats
