"""Log-probs of sampled tokens (interim: full-vocabulary; replaced by the chunked version)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(model, ids, attn, *, chunk_size: int = 1024, with_entropy: bool = False):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = F.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return lp, ent
