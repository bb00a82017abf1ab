"""Token sampling with per-row temperature / top-p / top-k, returning the sampled tokens' logprobs.

Pure tensor functions. The logprob of a sampled token is taken under the distribution it was
actually sampled from (temperature applied, top-k/top-p filtered and renormalised), which is
what an importance ratio against the trainer's recomputed logprobs needs at temperature 1.
Greedy rows (temperature 0) take the argmax and report its logprob under the unscaled
distribution (a delta has logprob 0, which tells the trainer nothing).
"""

from __future__ import annotations

import math

import torch


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    """Raise ValueError naming the parameter unless temperature is finite and >= 0, top_p is
    in (0, 1] and top_k is an integer >= 0 (0 = no top-k). A NaN reaching
    :func:`sample_tokens` would poison its whole batch, so engines check at submission."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) \
            or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")


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


def row_generator(seed: int) -> torch.Generator:
    """A CPU generator for one request's sampling (any int seed; the same on every device)."""
    g = torch.Generator()
    g.manual_seed(int(seed) % (1 << 63))
    return g


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token per row of ``probs`` [B, V] at uniform ``u`` [B] in [0, 1) (float64 CDF); never a
    zero-probability token. A tiny change of ``probs`` moves the pick only when ``u`` sits on a
    boundary, unlike a fresh multinomial draw."""
    p = probs.double()
    cdf = p.cumsum(-1)
    target = (u.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).clamp(max=p.shape[-1] - 1)
    last_nz = p.shape[-1] - 1 - (p > 0).flip(-1).int().argmax(-1, keepdim=True)
    ok = p.gather(-1, idx) > 0
    return torch.where(ok, idx, last_nz).squeeze(-1)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                  top_k: torch.Tensor, generator: torch.Generator | None = None,
                  row_generators: list[torch.Generator | None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` [B, V]; returns (tokens [B], logprobs [B]).

    ``row_generators[i]`` (a CPU generator, see :func:`row_generator`) makes row ``i`` draw
    its own uniform and pick by inverse CDF, so its token depends on that row's logits and
    generator only, not on the other rows or their order. Rows without one share
    ``generator`` (one ``torch.multinomial`` over those rows)."""
    logits = logits.float()
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = filter_logits(logits / safe_t.unsqueeze(-1), top_p, top_k)
    logp = torch.log_softmax(scaled, dim=-1)
    if bool(greedy.all()):
        tokens = logits.argmax(-1)
    else:
        probs = logp.exp()
        seeded = [i for i, g in enumerate(row_generators or []) if g is not None]
        if not seeded:
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            tokens = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            mine = set(seeded)
            shared = [i for i in range(logits.shape[0]) if i not in mine]
            if shared:
                ix = torch.tensor(shared, device=logits.device)
                tokens[ix] = torch.multinomial(probs[ix], 1, generator=generator).squeeze(-1)
            ix = torch.tensor(seeded, device=logits.device)
            u = torch.stack([torch.rand((), generator=row_generators[i], dtype=torch.float64)
                             for i in seeded])  # one draw per row and step, greedy rows too
            tokens[ix] = inverse_cdf(probs[ix], u)
        if bool(greedy.any()):
            tokens = torch.where(greedy, logits.argmax(-1), tokens)
    lp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if bool(greedy.any()):
        lp_greedy = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        lp = torch.where(greedy, lp_greedy, lp)
    return tokens, lp


def top_logprobs(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                 top_k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` most likely tokens of each row [B, n] and their logprobs, under the
    distribution :func:`sample_tokens` samples that row from (temperature, top-k/top-p; greedy
    rows: the unscaled one), so the sampled token's logprob is the one listed with it.
    Filtered-out tokens have logprob -inf."""
    logits = logits.float()
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = torch.log_softmax(filter_logits(logits / safe_t.unsqueeze(-1), top_p, top_k), dim=-1)
    logp = torch.where(greedy.unsqueeze(-1), torch.log_softmax(logits, dim=-1), scaled)
    vals, ids = torch.topk(logp, min(int(n), logits.shape[-1]), dim=-1)
    return ids, vals
