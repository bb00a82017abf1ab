"""Token sampling with per-row temperature / top-p / top-k, returning the sampled tokens' logprobs.

Pure tensor functions. The logprob of a sampled token is taken under the distribution it was
actually sampled from (temperature applied, top-k/top-p filtered and renormalised), which is
what an importance ratio against the trainer's recomputed logprobs needs at temperature 1.
Greedy rows (temperature 0) take the argmax and report its logprob under the unscaled
distribution (a delta has logprob 0, which tells the trainer nothing).
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's top-k / top-p nucleus to -inf (k = 0, p = 1: no filter)."""
    vocab = logits.shape[-1]
    if bool((top_k > 0).any()):
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
        kth = torch.topk(logits, int(k.max()), dim=-1).values.gather(-1, (k - 1).unsqueeze(-1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if bool((top_p < 1.0).any()):
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        drop_sorted = before >= top_p.unsqueeze(-1)  # the first token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                  top_k: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` [B, V]; returns (tokens [B], logprobs [B])."""
    logits = logits.float()
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = filter_logits(logits / safe_t.unsqueeze(-1), top_p, top_k)
    logp = torch.log_softmax(scaled, dim=-1)
    if bool(greedy.all()):
        tokens = logits.argmax(-1)
    else:
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        if bool(greedy.any()):
            tokens = torch.where(greedy, logits.argmax(-1), tokens)
    lp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if bool(greedy.any()):
        lp_greedy = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        lp = torch.where(greedy, lp_greedy, lp)
    return tokens, lp
