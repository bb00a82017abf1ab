"""Per-token entropy of the policy at each generated position, three ways.

* :func:`exact_entropies` — recomputed with an in-process model (a checkpoint): one forward
  for the hidden states, then the output head applied ``chunk`` positions at a time, so no
  ``[tokens × vocab]`` tensor exists at once (only ``[chunk × vocab]``). Exact for that
  checkpoint (which may be later than the policy that sampled the trajectory).
* :func:`topk_entropy` — from the top-k log-probs a server returned: the entropy of the
  top-k probabilities plus the leftover mass ``1 − Σp`` as one extra outcome. Merging the
  tail into one outcome can only lower entropy, so this is a **lower bound**; it is exact
  when the top k hold all the mass.
* :func:`surprisal` — when only the sampled token's log-prob is saved: ``−log p(sampled)``,
  whose expectation over the sampling *is* the entropy (an unbiased, noisy estimate per
  position, for tokens sampled at temperature 1 with the log-probs of that distribution).

What it does not do: choose between them (:func:`tirl.analysis.report.analyze` does, and says
which it used) or batch trajectories together (one sequence per forward keeps memory flat).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def entropy_of_logits(logits) -> Any:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension (a torch tensor)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def exact_entropies(model, ids: Sequence[int], positions: Sequence[int], chunk: int = 256) -> list[float]:
    """Entropy of the model's next-token distribution that *produced* ``ids[p]``, for each
    ``p`` in ``positions`` (so the distribution is read at ``p - 1``). Positions must be ≥ 1.

    The output head is applied to ``chunk`` positions at a time: peak memory is
    ``chunk × vocab`` floats, whatever the sequence length.
    """
    import torch

    if chunk < 1:
        raise ValueError(f"chunk = {chunk}: use a positive number of positions per chunk")
    if not positions:
        return []
    if min(positions) < 1 or max(positions) >= len(ids):
        raise ValueError(f"positions must lie in [1, {len(ids) - 1}] (the first token has no prediction)")
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None) or getattr(model, "model", None)
    if head is None or body is None or body is model:
        raise ValueError(f"{type(model).__name__} exposes no output head and base model; "
                         "pass a Hugging Face causal LM (AutoModelForCausalLM)")
    x = torch.tensor([list(ids)], dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad():
        hidden = body(input_ids=x).last_hidden_state[0]  # [T, hidden]
        prev = torch.tensor([p - 1 for p in positions], dtype=torch.long, device=hidden.device)
        out: list[float] = []
        for s in range(0, len(prev), chunk):
            logits = head(hidden[prev[s:s + chunk]])  # [chunk, vocab]
            out.extend(entropy_of_logits(logits).tolist())
    return out


def topk_entropy(top: Iterable[float] | dict[Any, float] | None) -> float | None:
    """Lower bound on the entropy (nats) from the top-k log-probs of one position.

    ``top``: the log-probs (a list, or a ``{token: logprob}`` dict as OpenAI-style servers
    return them). The leftover mass ``1 − Σp`` counts as one extra outcome.
    """
    if top is None:
        return None
    lps = list(top.values()) if isinstance(top, dict) else list(top)
    if not lps:
        return None
    ps = [math.exp(float(lp)) for lp in lps]
    h = -sum(p * math.log(p) for p in ps if p > 0)
    rest = 1.0 - sum(ps)
    if rest > 1e-12:
        h -= rest * math.log(rest)
    return h


def surprisal(logprob: float) -> float:
    """``−log p`` of the sampled token: an unbiased one-sample estimate of the entropy."""
    return -float(logprob)
