"""The policy update of one RL step: advantages → micro-batches → clipped loss → AdamW.

:func:`policy_update` takes the kept groups, computes GRPO advantages per group (Eq. 4),
packs sequences into token-budget micro-batches, recomputes the old log-probs with the
current weights (on-policy: the weights that generated the rollouts), accumulates the
token-level loss of Eq. 7 over micro-batches — normalised by the policy tokens of the whole
batch on all ranks — and takes one optimizer step with warm-up and gradient clipping.

The model is a :class:`~tirl.rl.parallel.ParallelPolicy` (single, ddp or fsdp): log-probs
go through its root (:func:`tirl.rl.logprobs.token_logprobs`, chunked over the sequence;
entropy only when ``entropy_coef > 0``), gradients are summed over ranks by DDP (on the
last micro-batch; ``no_sync`` before) or reduce-scattered by FSDP2, and the global gradient
norm covers every rank's shard. Under ddp/fsdp each rank runs the same number of
micro-batches (the short ranks add empty ones), so the collectives line up.

What it does not do: choose the strategy or the dtype (:mod:`tirl.rl.parallel`).
"""

from __future__ import annotations

from typing import Any

import torch

from tirl.rl import distributed as D
from tirl.rl.grpo import group_advantages, policy_loss
from tirl.rl.parallel import ParallelPolicy


def micro_batches(items: list[tuple], budget: int) -> list[list[tuple]]:
    """Group sequences (sorted by length) so that rows × longest row stays within ``budget``."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    out: list[list[tuple]] = []
    cur: list[tuple] = []
    for i in order:
        L = len(items[i][0])
        if cur and (len(cur) + 1) * max(L, max(len(c[0]) for c in cur)) > budget:
            out.append(cur)
            cur = []
        cur.append(items[i])
    if cur:
        out.append(cur)
    return out


def pack(items: list[tuple], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded (ids, attention, response mask over targets, advantage per row)."""
    T = max(len(it[0]) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), T), dtype=torch.long)
    mask = torch.zeros((len(items), T - 1), dtype=torch.float32)
    adv = torch.zeros(len(items))
    for r, (seq, m, a, *_) in enumerate(items):
        ids[r, :len(seq)] = torch.tensor(seq)
        attn[r, :len(seq)] = 1
        mask[r, :len(m)] = torch.tensor(m, dtype=torch.float32)
        adv[r] = a
    return ids.to(device), attn.to(device), mask.to(device), adv.to(device)


def behaviour_logprobs(items: list[tuple], device) -> torch.Tensor:
    """The engine's log-probs of each row's targets (``[B, T-1]``, 0 off the response), the
    4th entry of :func:`training_items`' tuples made with ``behaviour=True``."""
    T = max(len(it[0]) for it in items)
    out = torch.zeros((len(items), T - 1), dtype=torch.float32)
    for r, it in enumerate(items):
        if len(it) > 3:  # an empty padding micro-batch has none (and no targets)
            out[r, :len(it[3])] = torch.tensor(it[3], dtype=torch.float32)
    return out.to(device)


def training_items(groups: list[list], advantage: str, behaviour: bool = False) -> list[tuple]:
    """(sequence, target mask, advantage) per kept trajectory; sets ``meta["advantage"]``.
    ``behaviour``: a 4th entry, the engine's log-prob of each target (0 on the prompt)."""
    items = []
    for g in groups:
        adv = group_advantages([t.reward for t in g], mode=advantage)
        for t, a in zip(g, adv.tolist()):
            t.meta["advantage"] = a
            seq = t.prompt_ids + t.response_ids
            # target position j predicts seq[j+1]; response token k sits at len(prompt)+k
            m = [0] * (len(t.prompt_ids) - 1) + list(t.response_mask)
            if behaviour:
                items.append((seq, m, a, [0.0] * (len(t.prompt_ids) - 1) + [float(x) for x in t.logprobs]))
            else:
                items.append((seq, m, a))
    return items


def make_optimizer(module, rl) -> torch.optim.Optimizer:
    """AdamW over ``module``'s (fp32 master) parameters: pass the policy's ``root``."""
    return torch.optim.AdamW(module.parameters(), lr=rl.lr, weight_decay=rl.weight_decay, betas=(0.9, 0.999))


def pad_micro_batches(mbs: list[list[tuple]], count: int, pad_id: int) -> list[list[tuple]]:
    """``mbs`` followed by empty micro-batches (one pad pair, no target, advantage 0) up to
    ``count``: under ddp/fsdp every rank runs as many forwards and backwards (their
    collectives must line up); an empty one adds exactly zero to the loss and gradients."""
    return mbs + [[([pad_id, pad_id], [0], 0.0)] for _ in range(count - len(mbs))]


def policy_update(par: ParallelPolicy, optimizer, groups: list[list], rl, *, step: int, pad_id: int,
                  device: Any, is_cap: float | None = None) -> dict:
    """One optimizer step on ``groups`` (see the module docstring); returns its metrics.

    ``is_cap``: rollouts came from older weights (bounded-staleness async); each token's
    loss is weighted by the truncated importance ratio min(π_old/μ, is_cap) against the
    engine's behaviour log-probs μ (:func:`tirl.rl.staleness.truncated_is_weights`).
    Every rank must call it (possibly with no groups) so the collectives line up.
    """
    items = training_items(groups, rl.advantage, behaviour=is_cap is not None)
    total_tokens = D.all_sum([float(sum(sum(it[1]) for it in items))])[0]
    mbs = micro_batches(items, rl.micro_batch_tokens) if items else []
    n_real = len(mbs)
    if par.strategy != "single":
        mbs = pad_micro_batches(mbs, D.all_max(len(mbs)), pad_id)
    chunk = rl.loss_chunk_tokens
    with torch.no_grad():  # old logprobs: the weights that generated the rollouts
        old = [par.logprobs(*pack(mb, pad_id, device)[:3], chunk_size=chunk)[0] for mb in mbs]
    par.root.train()
    sums = {"tokens": 0.0, "clipped": 0.0, "dual": 0.0, "entropy": 0.0, "loss": 0.0, "is_w": 0.0,
            "is_capped": 0.0}
    optimizer.zero_grad(set_to_none=True)
    for i, (mb, old_lp) in enumerate(zip(mbs, old)):
        ids, attn, mask, adv = pack(mb, pad_id, device)
        if is_cap is not None:
            from tirl.rl.staleness import truncated_is_weights

            w = truncated_is_weights(old_lp, behaviour_logprobs(mb, device), mask, is_cap)
            adv = adv.unsqueeze(-1) * w  # w > 0: weighting the advantage = weighting the clipped loss
            sums["is_w"] += float(w.sum())
            sums["is_capped"] += float(((w >= is_cap) & (mask > 0)).sum())
        with par.micro_batch(last=i == len(mbs) - 1):
            # entropy costs one exp per chunk (no memory); its gradient flows only when entropy_coef > 0
            lp, ent = par.logprobs(ids, attn, mask, chunk_size=chunk, with_entropy=True)
            loss, st = policy_loss(lp, old_lp, adv, mask, clip_low=rl.clip_low, clip_high=rl.clip_high,
                                   dual_clip=rl.dual_clip, num_tokens=total_tokens, entropy=ent,
                                   entropy_coef=rl.entropy_coef)
            loss.backward()
        sums["tokens"] += st.tokens
        sums["clipped"] += st.clipped
        sums["dual"] += st.dual_clipped
        sums["entropy"] += st.entropy_sum
        sums["loss"] += float(loss.item())
    scale = min(1.0, (step + 1) / rl.warmup_steps) if rl.warmup_steps else 1.0
    for g in optimizer.param_groups:
        g["lr"] = rl.lr * scale
    gnorm = par.clip_grad_norm(rl.grad_clip)
    optimizer.step()
    par.reshard()
    par.root.eval()
    tok, clipped, dual, ent, loss, n_mb, is_w, is_capped = D.all_sum([
        sums["tokens"], sums["clipped"], sums["dual"], sums["entropy"], sums["loss"], float(n_real),
        sums["is_w"], sums["is_capped"]])
    out = {"loss": loss, "clip_frac": clipped / max(1.0, tok), "dual_clip_frac": dual / max(1.0, tok),
           "entropy": ent / max(1.0, tok), "grad_norm": gnorm,
           "lr": rl.lr * scale, "policy_tokens": tok, "micro_batches": int(n_mb)}
    if is_cap is not None:
        out.update({"is_weight_mean": is_w / max(1.0, tok), "is_capped_frac": is_capped / max(1.0, tok)})
    return out
