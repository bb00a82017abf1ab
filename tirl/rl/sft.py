"""Supervised fine-tuning for the non-reasoning stage (§4): loss on assistant tokens only.

:func:`sft_batches` packs tokenized examples (ids + loss mask from
:func:`tirl.data.sft.tokenize_example`) into padded batches; :func:`run_sft` trains with
AdamW, linear warm-up, gradient clipping 1.0 and the token-mean cross-entropy over masked
(assistant) tokens. Deterministic for a seed on CPU.

What it does not do: packing several examples into one row, or distributed SFT (the demo's
SFT is a minute of CPU; under torchrun every rank runs the same SFT from the same seed,
which keeps the replicas identical).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class SFTResult:
    steps: int
    final_loss: float
    seconds: float
    losses: list[float]


def masked_lm_loss(model, ids: torch.Tensor, mask: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose *target* has mask 1."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    tgt = ids[:, 1:]
    w = mask[:, 1:].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none")
    return (ce * w.reshape(-1)).sum() / w.sum().clamp_min(1.0)


def sft_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                rng: random.Random):
    """One epoch of shuffled, right-padded batches (ids, loss mask, attention mask)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        T = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        attn = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, (x, m) in enumerate(chunk):
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(m)] = torch.tensor(m)
            attn[r, :len(x)] = 1
        yield ids, mask, attn


def run_sft(model, examples: list[tuple[list[int], list[int]]], *, epochs: int, lr: float,
            batch_size: int, pad_id: int, seed: int, warmup_steps: int = 20,
            weight_decay: float = 0.01, grad_clip: float = 1.0,
            on_step: Callable[[int, int, float], None] | None = None) -> SFTResult:
    """Train ``model`` in place on (ids, mask) examples; ``on_step(step, total, loss)`` reports."""
    if not examples:
        raise ValueError("SFT got no examples; check sft.data and sft.size")
    device = next(model.parameters()).device
    rng = random.Random(f"tirl-sft-order-{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(examples) / batch_size)
    total = per_epoch * epochs
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        for ids, mask, attn in sft_batches(examples, batch_size, pad_id, rng):
            scale = min(1.0, (step + 1) / max(1, warmup_steps))
            # cosine decay to 10% after warm-up: a short SFT ends on a settled model
            if step >= warmup_steps and total > warmup_steps:
                frac = (step - warmup_steps) / (total - warmup_steps)
                scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            loss = masked_lm_loss(model, ids.to(device), mask.to(device), attn.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            step += 1
            losses.append(float(loss.item()))
            if on_step is not None:
                on_step(step, total, losses[-1])
    model.eval()
    return SFTResult(steps=step, final_loss=sum(losses[-10:]) / len(losses[-10:]),
                     seconds=time.perf_counter() - t0, losses=losses)


def sft_stage(cfg, par, tokenizer, metrics, *, progress: bool) -> SFTResult:
    """The recipe's SFT stage: ``[sft]`` material rendered as rollouts render it (``[agent]``),
    trained through the policy's parallel root (every rank on the same batches, gradients
    averaged), with a progress bar and ``sft`` / ``sft_done`` records in ``metrics``."""
    from tirl.data.sft import load_sft_examples, tokenize_example
    from tirl.runs import progress_bar

    s, a = cfg.sft, cfg.agent
    exs = load_sft_examples(s.data, s.size, cfg.run.seed)
    toks = [tokenize_example(tokenizer, e, a.system_prompt, s.max_length, timing=a.tool_response_timing,
                             open_with_reason=a.open_with_reason) for e in exs]
    with progress_bar(math.ceil(len(toks) / s.batch_size) * s.epochs, "SFT", enabled=progress) as bar:
        def on_step(step, total, loss):
            bar.advance(1)
            bar.status(f"loss {loss:.3f}")
            if metrics and (step % 10 == 0 or step == total):
                metrics.write({"phase": "sft", "sft_step": step, "sft_loss": loss, "step": 0})

        par.set_reduction("mean")  # every rank trains on the same batches: average, not sum
        try:
            res = run_sft(par.root, toks, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                          pad_id=tokenizer.pad_token_id or 0, seed=cfg.run.seed,
                          warmup_steps=s.warmup_steps, on_step=on_step)
        finally:
            par.set_reduction("sum")
    if metrics:
        metrics.write({"phase": "sft_done", "step": 0, "sft_final_loss": res.final_loss,
                       "sft_seconds": res.seconds, "sft_examples": len(toks)})
    return res
