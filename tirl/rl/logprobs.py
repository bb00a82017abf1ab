"""Per-token log-probabilities (and entropies) of a causal LM without a ``[tokens × vocab]`` tensor.

The policy loss needs, per target token, ``log p(y_t | y_<t)`` and optionally the entropy of
the next-token distribution. Asking the model for ``.logits`` and taking a full log-softmax
materialises several ``[tokens × vocab]`` fp32 tensors (logits, log-softmax, their gradients,
``exp`` for the entropy): at 65,536 tokens and a 151,936-token vocabulary each one is ~40 GB.

Here the decoder's hidden states are computed once; the output projection (``lm_head``),
log-softmax, gather and entropy then run chunk by chunk over the tokens in fp32, inside one
``torch.autograd.Function`` that keeps only the hidden states and a few numbers per token
(log-sum-exp, entropy) for backward and recomputes each chunk's logits there. The largest
temporary is ``[chunk × vocab]``; no ``[tokens × vocab]`` tensor exists in forward or backward.

* :func:`token_logprobs` — the entry point for an HF causal LM (``model.model`` /
  ``get_decoder()`` plus ``lm_head`` / ``get_output_embeddings()``, tied embeddings included).
* :func:`chunked_logprobs` — the same on given hidden states and an output weight (pure).
* :func:`naive_token_logprobs` — the reference (full logits), for tests and benchmarks.
* :func:`verify_split` — checks once, on a short input, that decoder + ``lm_head`` reproduce
  the model's own logits (catches a logit transform this module does not know about).

What it does not do: it does not support models whose logits are not ``lm_head(last hidden
state)`` (logit soft-capping, logit scales, multiple heads) — those raise a ``ValueError``
naming the model and the attribute; use :func:`naive_token_logprobs` for them. It reads
``lm_head.weight`` directly, so under FSDP the output projection must be unsharded (or
gathered by the caller) while it runs; DDP users pass the unwrapped module. Gradients w.r.t.
the output weight are accumulated over chunks in fp32 (for a bf16 weight that is a transient
fp32 ``[vocab × hidden]`` buffer; for an fp32 weight it is the gradient itself).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Elements of one ``[chunk × vocab]`` fp32 temporary when ``chunk_size`` is not given
#: (2**26 elements = 256 MiB); the chunk's token count is this divided by the vocabulary.
DEFAULT_CHUNK_ELEMENTS = 1 << 26

#: Config attributes of HF models whose logits are a transform of ``lm_head(hidden)``.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def default_chunk_size(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that a ``[chunk × vocab]`` tensor has about ``chunk_elements`` entries."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be ≥ 1")
    return max(1, chunk_elements // vocab_size)


def _acc_dtype(weight: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for an fp64 weight (exact gradient checks)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class _ChunkedLogProbs(torch.autograd.Function):
    """``(hidden [N, H], weight [V, H], bias [V] | None, targets [N])`` → ``(logprobs [N], entropy [N])``.

    Forward keeps the inputs plus the per-token log-sum-exp and entropy; backward recomputes
    each chunk's logits and forms ``∂/∂z`` directly: for ``lp = z_y − lse``,
    ``∂lp/∂z = onehot(y) − p``; for ``H = −Σ p·log p``, ``∂H/∂z = −p·(log p + H)``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, with_entropy: bool):
        n = hidden.shape[0]
        acc = _acc_dtype(weight)
        lp = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        ent = torch.empty(n, dtype=acc, device=hidden.device) if with_entropy else None
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            z = F.linear(hidden[s:e], weight, bias).to(acc)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s:e] = lse_c
            lp[s:e] = z.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - lse_c
            if ent is not None:
                # H = −Σ p·log p; z becomes log p in place (no cancellation as in lse − Σ p·z)
                logp = z.sub_(lse_c.unsqueeze(-1))
                ent[s:e] = -(torch.exp(logp).mul_(logp)).sum(-1)
                del logp
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if g_lp is None and g_ent is None:
            return None, None, None, None, None, None
        n = hidden.shape[0]
        cs = ctx.chunk_size
        acc = _acc_dtype(weight)
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        g_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if (
            need_b and bias is not None) else None
        for s in range(0, n, cs):
            e = min(n, s + cs)
            z = F.linear(hidden[s:e], weight, bias).to(acc)
            # p = softmax(z), computed in place of z
            logp = z.sub_(lse[s:e].unsqueeze(-1))
            g = torch.exp(logp)  # p
            if g_ent is not None:
                # ∂H/∂z = −p·(log p + H); logp is rewritten in place as (log p + H)·g_ent
                logp.add_(ent[s:e].unsqueeze(-1)).mul_(g_ent[s:e].unsqueeze(-1))
                if g_lp is not None:
                    # g_lp·(onehot − p) − g_ent·p·(log p + H) = −p·(g_lp + g_ent·(log p + H)) + g_lp·onehot
                    logp.add_(g_lp[s:e].unsqueeze(-1))
                g.mul_(logp).neg_()
            else:
                g.mul_(-g_lp[s:e].unsqueeze(-1))
            del z, logp
            if g_lp is not None:
                g.scatter_add_(-1, targets[s:e].unsqueeze(-1), g_lp[s:e].unsqueeze(-1))
            gz = g.to(weight.dtype)
            del g
            if g_h is not None:
                g_h[s:e] = gz @ weight
            if g_w is not None:
                if gz.dtype == acc:
                    g_w.addmm_(gz.t(), hidden[s:e].to(acc))
                else:
                    g_w.add_((gz.t() @ hidden[s:e]).to(acc))
            if g_b is not None:
                g_b.add_(gz.to(acc).sum(0))
            del gz
        if g_w is not None:
            g_w = g_w.to(weight.dtype)
        if g_b is not None:
            g_b = g_b.to(bias.dtype)
        return g_h, g_w, g_b, None, None, None


def chunked_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(hidden @ weightᵀ + bias)[target]`` per token, chunk by chunk, in fp32.

    ``hidden`` is ``[..., H]``, ``targets`` the matching ``[...]`` token ids, ``weight``
    ``[V, H]`` (an ``nn.Linear`` weight). Returns fp32 log-probabilities shaped like
    ``targets`` and, when ``with_entropy``, the entropies of the next-token distributions
    (differentiable too). ``chunk_size`` is tokens per chunk (default:
    :func:`default_chunk_size` of the vocabulary).
    """
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not match: "
            "weight must be [vocab, hidden] with hidden = the last dim of hidden"
        )
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be hidden's shape without the last dim "
                         f"{tuple(hidden.shape[:-1])}")
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be ≥ 1 (tokens per chunk)")
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= weight.shape[0]):
        raise ValueError(f"targets hold ids outside 0..{weight.shape[0] - 1} (min {int(t.min())}, "
                         f"max {int(t.max())}); mask padding with a valid id such as the pad token")
    lp, ent = _ChunkedLogProbs.apply(h, weight, bias, t, int(chunk_size), bool(with_entropy))
    return lp.reshape(lead), (ent.reshape(lead) if ent is not None else None)


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(decoder, lm_head)`` of an HF causal LM whose logits are ``lm_head(decoder(...)[0])``.

    Raises ``ValueError`` naming the model class for models without that split or with a
    logit transform (soft-capping, logit scale) this module would silently skip.
    """
    name = type(model).__name__
    cfg = getattr(model, "config", None)
    for attr in _LOGIT_TRANSFORMS:
        v = getattr(cfg, attr, None) if cfg is not None else None
        if v is None:
            v = getattr(model, attr, None)
        if isinstance(v, torch.Tensor):
            v = float(v.detach().float().reshape(-1)[0]) if v.numel() == 1 else math.nan
        if v is not None and v not in (0, 1, 1.0, 0.0, False):
            raise ValueError(
                f"{name} applies `{attr}` = {v} to its logits, which token_logprobs does not model; "
                "use tirl.rl.logprobs.naive_token_logprobs for this model"
            )
    decoder = getattr(model, "model", None)
    if not isinstance(decoder, nn.Module) and hasattr(model, "get_decoder"):
        decoder = model.get_decoder()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else getattr(model, "lm_head", None)
    if not isinstance(decoder, nn.Module) or decoder is model or not isinstance(head, nn.Linear):
        raise ValueError(
            f"{name} has no (decoder, lm_head: nn.Linear) split (found decoder={type(decoder).__name__}, "
            f"lm_head={type(head).__name__}); token_logprobs needs an HF causal LM such as "
            "LlamaForCausalLM/Qwen3ForCausalLM — use tirl.rl.logprobs.naive_token_logprobs instead"
        )
    return decoder, head


def _shifted_targets(input_ids: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    want = (input_ids.shape[0], input_ids.shape[1] - 1)
    if targets is None:
        return input_ids[:, 1:]
    if tuple(targets.shape) != want:
        raise ValueError(f"targets {tuple(targets.shape)} must be [batch, time − 1] = {want}: "
                         "targets[:, t] is the token position t predicts (default input_ids[:, 1:])")
    return targets


def token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    loss_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities ``[batch, time − 1]`` (fp32) of ``targets`` under ``model``, memory-safe.

    Position ``t`` predicts ``targets[:, t]`` (default ``input_ids[:, 1:]``), exactly as
    ``log_softmax(model(input_ids, attention_mask).logits[:, :-1].float())`` gathered at the
    targets — but the decoder runs once and the head/log-softmax run in chunks of
    ``chunk_size`` tokens (default :func:`default_chunk_size`), recomputed in backward.

    * ``with_entropy`` — also return the entropy of each position's next-token distribution
      (differentiable; costs one extra ``exp`` per chunk). Ask for it only when the entropy
      coefficient is > 0 or the metric is logged.
    * ``loss_mask`` — ``[batch, time − 1]``; when given, only positions where it is non-zero
      are computed (prompt, tool-output and padding tokens cost nothing) and the others are
      returned as 0 (entropy 0). Use the same mask for old/reference log-probs.
    """
    if input_ids.ndim != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} must be [batch, time] with time ≥ 2")
    decoder, head = split_causal_lm(model)
    tgt = _shifted_targets(input_ids, targets)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    hidden = hidden[:, :-1]
    shape = tgt.shape
    if loss_mask is None:
        lp, ent = chunked_logprobs(hidden, head.weight, tgt, bias=head.bias, chunk_size=chunk_size,
                                   with_entropy=with_entropy)
        return lp, ent
    if tuple(loss_mask.shape) != tuple(shape):
        raise ValueError(f"loss_mask {tuple(loss_mask.shape)} must match targets {tuple(shape)}")
    idx = loss_mask.reshape(-1).nonzero().squeeze(-1)
    h_sel = hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx)
    t_sel = tgt.reshape(-1).index_select(0, idx)
    lp_sel, ent_sel = chunked_logprobs(h_sel, head.weight, t_sel, bias=head.bias, chunk_size=chunk_size,
                                       with_entropy=with_entropy)
    n = tgt.numel()
    lp = torch.zeros(n, dtype=torch.float32, device=hidden.device).index_copy(0, idx, lp_sel).reshape(shape)
    ent = None
    if ent_sel is not None:
        ent = torch.zeros(n, dtype=torch.float32, device=hidden.device).index_copy(0, idx, ent_sel).reshape(shape)
    return lp, ent


def naive_token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: full fp32 logits, log-softmax and gather (memory ∝ tokens × vocab)."""
    tgt = _shifted_targets(input_ids, targets)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logp = F.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return lp, ent


def verify_split(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *, atol: float = 1e-4) -> None:
    """Check on a (short) input that :func:`token_logprobs` matches the model's own logits.

    Raises ``ValueError`` with the largest difference when it does not (a logit transform
    this module does not model); call once at start-up on a few tokens.
    """
    with torch.no_grad():
        ref, _ = naive_token_logprobs(model, input_ids, attention_mask)
        got, _ = token_logprobs(model, input_ids, attention_mask)
    diff = float((ref - got).abs().max()) if ref.numel() else 0.0
    if not diff <= atol:
        raise ValueError(
            f"{type(model).__name__}: decoder + lm_head differ from the model's logits by up to {diff:.3g} "
            f"(> atol={atol}) in log-probability; its logits are not lm_head(last hidden state) — "
            "use tirl.rl.logprobs.naive_token_logprobs for it"
        )
