"""Chunked token log-probs equal the full-logits reference (values and gradients), in fp32."""

import math

import pytest
import torch
from torch import nn

from tirl.rl.logprobs import (
    chunked_logprobs,
    default_chunk_size,
    naive_token_logprobs,
    split_causal_lm,
    token_logprobs,
    verify_split,
)

TOL = dict(atol=1e-6, rtol=1e-6)


def assert_scaled_close(got, ref, name=""):
    """|got − ref| ≤ 1e-6 · max(1, max|ref|): fp32 sums in another order (per chunk) differ by
    a few ulps of the tensor's largest entry, not of each entry."""
    scale = max(1.0, float(ref.abs().max()))
    err = float((got - ref).abs().max())
    assert err <= 1e-6 * scale, f"{name}: max |Δ| = {err:.3g} > 1e-6 × {scale:.3g}"


def tiny_llama(vocab=61, tied=True, seed=0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, pad_token_id=0, bos_token_id=None, eos_token_id=None, **kw)
    model = LlamaForCausalLM(cfg).float()
    if not tied:  # a distinct head, so a tie would show as a wrong gradient
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.3)
    return model


def batch(vocab=61, B=3, T=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    lengths = [T, T - 4, T - 7][:B]
    for r, L in enumerate(lengths):  # right padding, as the trainer packs
        ids[r, L:] = 0
        attn[r, L:] = 0
    mask = attn[:, 1:].float() * (torch.rand(B, T - 1, generator=g) > 0.3).float()
    weights = torch.randn(B, T - 1, generator=g)
    return ids, attn, mask, weights


def grads_of(model, fn, weights, mask, ent_coef):
    model.zero_grad(set_to_none=True)
    lp, ent = fn()
    loss = (lp * weights * mask).sum()
    if ent is not None:
        loss = loss + ent_coef * (ent * mask).sum()
    loss.backward()
    return lp.detach(), (ent.detach() if ent is not None else None), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunked_equals_naive_values_and_grads(tied, with_entropy, chunk_size):
    model = tiny_llama(tied=tied)
    ids, attn, mask, w = batch()
    ref = grads_of(model, lambda: naive_token_logprobs(model, ids, attn, with_entropy=with_entropy), w, mask, 0.3)
    got = grads_of(model, lambda: token_logprobs(model, ids, attn, chunk_size=chunk_size,
                                                 with_entropy=with_entropy), w, mask, 0.3)
    # every position (padding included) matches: both paths see the same hidden states
    torch.testing.assert_close(got[0], ref[0], **TOL)
    if with_entropy:
        torch.testing.assert_close(got[1], ref[1], **TOL)
    else:
        assert got[1] is None and ref[1] is None
    assert got[2].keys() == ref[2].keys()
    assert ("lm_head.weight" in ref[2]) == (not tied)
    for name in ref[2]:
        assert_scaled_close(got[2][name], ref[2][name], name)


def test_loss_mask_computes_only_masked_positions_and_matches():
    model = tiny_llama()
    ids, attn, mask, w = batch()
    ref = grads_of(model, lambda: naive_token_logprobs(model, ids, attn, with_entropy=True), w, mask, -0.2)
    got = grads_of(model, lambda: token_logprobs(model, ids, attn, loss_mask=mask, chunk_size=4,
                                                 with_entropy=True), w, mask, -0.2)
    on = mask.bool()
    torch.testing.assert_close(got[0][on], ref[0][on], **TOL)
    torch.testing.assert_close(got[1][on], ref[1][on], **TOL)
    assert torch.all(got[0][~on] == 0) and torch.all(got[1][~on] == 0)
    for name in ref[2]:
        assert_scaled_close(got[2][name], ref[2][name], name)


def test_explicit_targets_and_chunks_not_dividing():
    torch.manual_seed(0)
    h = torch.randn(2, 13, 8, requires_grad=True)
    wt = torch.randn(29, 8, requires_grad=True)
    b = torch.randn(29, requires_grad=True)
    t = torch.randint(0, 29, (2, 13))
    logp = torch.log_softmax(h @ wt.t() + b, -1)
    ref_lp = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    ref_ent = -(logp.exp() * logp).sum(-1)
    (ref_lp.sum() + 0.5 * ref_ent.sum()).backward()
    ref_g = [x.grad.clone() for x in (h, wt, b)]
    for x in (h, wt, b):
        x.grad = None
    lp, ent = chunked_logprobs(h, wt, t, bias=b, chunk_size=5, with_entropy=True)  # 26 = 5·5 + 1
    (lp.sum() + 0.5 * ent.sum()).backward()
    torch.testing.assert_close(lp, ref_lp, **TOL)
    torch.testing.assert_close(ent, ref_ent, **TOL)
    for x, g in zip((h, wt, b), ref_g):
        assert_scaled_close(x.grad, g)


def test_gradcheck_fp64_entropy_only_and_logprob_only():
    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(lambda h, w: chunked_logprobs(h, w, t, chunk_size=3)[0], (h, w))
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_logprobs(h, w, t, chunk_size=3, with_entropy=True)[1], (h, w))


def test_hand_worked_uniform_distribution():
    # zero hidden → all logits equal → log p = −log V, entropy = log V, for any target
    V = 8
    lp, ent = chunked_logprobs(torch.zeros(3, 4), torch.randn(V, 4), torch.tensor([0, 3, 7]),
                               with_entropy=True)
    torch.testing.assert_close(lp, torch.full((3,), -math.log(V)))
    torch.testing.assert_close(ent, torch.full((3,), math.log(V)))


def test_no_grad_path_for_old_logprobs():
    model = tiny_llama()
    ids, attn, _, _ = batch()
    with torch.no_grad():
        ref, _ = naive_token_logprobs(model, ids, attn)
        got, ent = token_logprobs(model, ids, attn, chunk_size=5)
    assert ent is None and not got.requires_grad
    torch.testing.assert_close(got, ref, **TOL)
    verify_split(model, ids[:1], attn[:1])


def test_default_chunk_size_bounds_the_chunk():
    assert default_chunk_size(151_936) == (1 << 26) // 151_936
    assert default_chunk_size(10**9) == 1
    with pytest.raises(ValueError, match="vocab_size"):
        default_chunk_size(0)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="chunk_size=0"):
        chunked_logprobs(torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="outside 0..4"):
        chunked_logprobs(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"\[vocab, hidden\]"):
        chunked_logprobs(torch.zeros(2, 4), torch.zeros(5, 3), torch.tensor([0, 1]))
    model = tiny_llama()
    ids = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"targets \(2, 6\)"):
        token_logprobs(model, ids, targets=ids)
    with pytest.raises(ValueError, match="loss_mask"):
        token_logprobs(model, ids, loss_mask=torch.ones(2, 6))


class NoSplit(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        raise AssertionError("not called")


def test_models_without_the_split_are_refused():
    with pytest.raises(ValueError, match="NoSplit has no .*naive_token_logprobs"):
        split_causal_lm(NoSplit())
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping.*naive_token_logprobs"):
        token_logprobs(model, torch.ones(1, 4, dtype=torch.long))


def test_verify_split_catches_an_unknown_logit_transform():
    model = tiny_llama()
    ids, attn, _, _ = batch()
    original = type(model).forward

    def scaled(self, *a, **kw):
        out = original(self, *a, **kw)
        out.logits = out.logits * 2.0
        return out

    model.forward = scaled.__get__(model)
    with pytest.raises(ValueError, match="not lm_head"):
        verify_split(model, ids, attn)


def test_bf16_runs_and_is_close():
    model = tiny_llama(tied=False).to(torch.bfloat16)
    ids, attn, mask, w = batch()
    ref, _ = naive_token_logprobs(model, ids, attn)
    lp, ent = token_logprobs(model, ids, attn, chunk_size=4, with_entropy=True)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    torch.testing.assert_close(lp, ref, atol=1e-2, rtol=1e-2)
    (lp * w * mask).sum().backward()
    assert model.lm_head.weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(model.lm_head.weight.grad.float()).all()


def test_nothing_tokens_by_vocab_is_kept_for_backward():
    # the autograd graph of the chunked path holds no [tokens × vocab] tensor (the naive one does)
    V, N = 397, 200
    model = tiny_llama(vocab=V)
    ids = torch.randint(1, V, (2, N // 2 + 1))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = token_logprobs(model, ids, chunk_size=8, with_entropy=True)
    assert max(sizes) < N * V / 4
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        naive_token_logprobs(model, ids, with_entropy=True)
    assert max(sizes) >= N * V


def test_policy_loss_with_chunked_entropy_and_its_checks():
    from tirl.rl.grpo import policy_loss

    model = tiny_llama()
    ids, attn, mask, _ = batch()
    lp, ent = token_logprobs(model, ids, attn, with_entropy=True)
    old = lp.detach()
    adv = torch.tensor([1.0, -1.0, 0.5])
    loss0, st0 = policy_loss(lp, old, adv, mask, entropy=ent.detach())
    loss1, st1 = policy_loss(lp, old, adv, mask, entropy=ent, entropy_coef=0.1)
    # ratio = 1 everywhere: the pg term is −mean(A); the entropy term is −0.1·mean(H)
    n = float(mask.sum())
    mean_adv = float((adv.unsqueeze(-1) * mask).sum()) / n
    assert loss0.item() == pytest.approx(-mean_adv, rel=1e-5)
    assert loss1.item() == pytest.approx(-mean_adv - 0.1 * st0.entropy_sum / n, rel=1e-5)
    assert st0.entropy_sum == pytest.approx(float((ent.detach() * mask).sum()), rel=1e-6)
    with pytest.raises(ValueError, match="entropy_coef=0.1 but no entropy"):
        policy_loss(lp, old, adv, mask, entropy_coef=0.1)
    with pytest.raises(ValueError, match="kl_coef=0.2 but no ref_logprobs"):
        policy_loss(lp, old, adv, mask, kl_coef=0.2)
    with pytest.raises(ValueError, match="entropy .* must match"):
        policy_loss(lp, old, adv, mask, entropy=ent[:, :3])
