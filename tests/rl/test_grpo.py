"""Hand-worked examples of the GRPO-RoC equations (rStar2-Agent §2.2.3, Eq. 4-7)."""

import math
import random
from collections import Counter

import pytest
import torch

from tirl.rl.grpo import (group_advantages, policy_loss, resample_on_correct, roc_penalty,
                          roc_split)


# ---- Eq. 5-6 -------------------------------------------------------------------------

def test_roc_penalty_hand_examples():
    # 1 failed of 4 calls, one <answer>, 3 turns: p_err = 0.25, p_format = 0
    assert roc_penalty(4, 1, 1, 3) == pytest.approx(0.25)
    # no tool calls: p_err = 0.5; two answers over 4 turns: p_format = 1/4
    assert roc_penalty(0, 0, 2, 4) == pytest.approx(0.75)
    # no <answer>: p_format = 1; all 2 calls failed: p_err = 1
    assert roc_penalty(2, 2, 0, 2) == pytest.approx(2.0)
    # many answers over few turns is capped at 1
    assert roc_penalty(1, 0, 9, 2) == pytest.approx(1.0)


def test_roc_penalty_rejects_impossible_counts():
    with pytest.raises(ValueError, match="num_failed_calls=3"):
        roc_penalty(2, 3, 1, 1)
    with pytest.raises(ValueError, match="num_turns=0"):
        roc_penalty(0, 0, 1, 0)


# ---- RoC down-sampling ----------------------------------------------------------------

def test_roc_split_halves_each_class():
    assert roc_split(10, 22, 16) == (5, 11)
    assert roc_split(16, 16, 16) == (8, 8)
    assert roc_split(3, 29, 16) == (2, 14)  # 1.5 rounds half up to 2
    # at least min_pos / min_neg where available
    assert roc_split(1, 31, 16) == (1, 15)
    assert roc_split(2, 30, 16, min_pos=2) == (2, 14)
    assert roc_split(30, 2, 16, min_neg=2) == (14, 2)
    assert roc_split(31, 1, 16, min_neg=2) == (15, 1)
    # fewer than G (infra failures dropped): keep everything
    assert roc_split(3, 4, 16) == (3, 4)


def test_topk_keeps_lowest_penalty_positives():
    rewards = [1, 1, 1, 1, 0, 0, 0, 0]
    pens = [0.9, 0.0, 0.5, 0.25, 9, 9, 9, 9]
    kept = resample_on_correct(rewards, pens, 4, mode="topk", min_pos=0, min_neg=0,
                               rng=random.Random(1))
    pos = [i for i in kept if rewards[i] == 1]
    neg = [i for i in kept if rewards[i] == 0]
    assert pos == [1, 3]  # penalties 0.0 and 0.25
    assert len(neg) == 2 and set(neg) <= {4, 5, 6, 7}


def test_weighted_prefers_low_penalty_in_proportion():
    # two positives compete for one slot: weights 1/(0+0.05)=20 vs 1/(1+0.05)=0.952...
    rewards = [1, 1, 0, 0]
    pens = [0.0, 1.0, 0.0, 0.0]
    rng = random.Random(0)
    counts = Counter()
    for _ in range(4000):
        kept = resample_on_correct(rewards, pens, 2, mode="weighted", min_pos=0, min_neg=0, rng=rng)
        counts.update(i for i in kept if rewards[i] == 1)
    expected = 20 / (20 + 1 / 1.05)
    assert counts[0] / 4000 == pytest.approx(expected, abs=0.02)


def test_negatives_are_uniform():
    rewards = [1] * 4 + [0] * 4
    rng = random.Random(0)
    counts = Counter()
    for _ in range(4000):
        kept = resample_on_correct(rewards, [0.0] * 8, 4, rng=rng, min_pos=0, min_neg=0)
        counts.update(i for i in kept if rewards[i] == 0)
    for i in range(4, 8):
        assert counts[i] / 4000 == pytest.approx(0.5, abs=0.04)


def test_resample_is_deterministic_for_a_seed_and_sized_g():
    rewards = [1, 0] * 16
    pens = [i / 32 for i in range(32)]
    a = resample_on_correct(rewards, pens, 16, rng=random.Random(7))
    b = resample_on_correct(rewards, pens, 16, rng=random.Random(7))
    assert a == b and len(a) == 16 and len(set(a)) == 16
    with pytest.raises(ValueError, match="3 rewards but 2 penalties"):
        resample_on_correct([1, 0, 1], [0, 0], 2)


def test_roc_keeps_the_only_positive_when_g_is_two():
    # G=2, 1 positive + 3 negatives: 1*2/4 = 0.5 rounds to 1 positive, but min_neg=2 used to
    # take both slots and drop the only positive (an all-negative group: no learning signal)
    assert roc_split(1, 3, 2) == (1, 1)
    kept = resample_on_correct([0, 1, 0, 0], [0.0] * 4, 2, rng=random.Random(0))
    assert 1 in kept and len(kept) == 2
    # the mirror case keeps the only negative
    assert roc_split(3, 1, 2) == (1, 1)


def test_roc_keeps_a_rare_positive_with_min_pos_zero():
    # oversample 3x (12 -> 4), 1 positive: 1*4/12 = 0.33 rounds to 0, and min_pos=0 did not help
    assert roc_split(1, 11, 4, min_pos=0) == (1, 3)
    assert roc_split(11, 1, 4, min_neg=0) == (3, 1)
    kept = resample_on_correct([0] * 7 + [1] + [0] * 4, [0.0] * 12, 4, min_pos=0,
                               rng=random.Random(3))
    assert 7 in kept and len(kept) == 4


def test_roc_g_one_keeps_one_rollout():
    # G=1 cannot hold both classes: one rollout, never a negative count (it was (-1, 2))
    assert sum(roc_split(1, 3, 1)) == 1 and min(roc_split(1, 3, 1)) >= 0


def test_roc_split_property_over_all_small_groups():
    # every group of 1..8 kept from 1x..4x oversampling, every class mix and minimum
    for g in range(1, 9):
        for factor in range(1, 5):
            n = g * factor
            for n_pos in range(n + 1):
                n_neg = n - n_pos
                for min_pos in range(4):
                    for min_neg in range(4):
                        k_pos, k_neg = roc_split(n_pos, n_neg, g, min_pos, min_neg)
                        case = (n_pos, n_neg, g, min_pos, min_neg, k_pos, k_neg)
                        assert 0 <= k_pos <= n_pos and 0 <= k_neg <= n_neg, case
                        assert k_pos + k_neg == min(g, n), case
                        if n_pos and n_neg and g >= 2:
                            assert k_pos >= 1 and k_neg >= 1, case
                        # the minimums hold whenever the group has room for both of them
                        # (each raised to 1 by the both-classes rule)
                        lo_pos, lo_neg = min(min_pos, n_pos), min(min_neg, n_neg)
                        if n_pos and n_neg and g >= 2:
                            lo_pos, lo_neg = max(lo_pos, 1), max(lo_neg, 1)
                        if lo_pos + lo_neg <= g:
                            assert k_pos >= lo_pos and k_neg >= lo_neg, case


def test_resample_property_over_random_groups():
    rng = random.Random(12)
    for _ in range(3000):
        g = rng.randint(2, 16)
        n = g * rng.randint(1, 3)
        rewards = [1.0 if rng.random() < rng.random() else 0.0 for _ in range(n)]
        pens = [rng.random() * 2 for _ in range(n)]
        kept = resample_on_correct(rewards, pens, g, mode=rng.choice(["weighted", "topk"]),
                                   min_pos=rng.randint(0, 3), min_neg=rng.randint(0, 3),
                                   rng=random.Random(rng.random()))
        assert kept == sorted(set(kept)) and len(kept) == min(g, n)
        classes = {rewards[i] > 0 for i in kept}
        if 0.0 < sum(rewards) < n:  # both classes were there: both stay
            assert classes == {True, False}, (rewards, kept, g)


# ---- Eq. 4 ----------------------------------------------------------------------------

def test_group_advantages_hand_example():
    # mean 0.25, sample std sqrt((0.75^2 + 3*0.25^2)/3) = 0.5
    adv = group_advantages([1, 0, 0, 0], eps=0.0)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert group_advantages([1, 0, 0, 0], mode="mean").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages([1, 1, 1]).tolist() == [0.0, 0.0, 0.0]


# ---- Eq. 7 ----------------------------------------------------------------------------

def test_policy_loss_hand_example():
    # four tokens: (A, ratio) and the hand-computed per-token loss
    #   ( 1, 1.5) -> max(-1.5, -1.28) = -1.28      (clipped high at 1.28)
    #   (-1, 0.5) -> max( 0.5,  0.8 ) =  0.8       (clipped low at 0.8)
    #   (-1, 5.0) -> max( 5.0,  1.28) =  5.0 -> dual-clip min(5, 3) = 3.0
    #   ( 1, 1.0) -> -1.0
    # a fifth token is masked (tool output) and must not count.
    A = torch.tensor([[1.0, -1.0, -1.0, 1.0, 100.0]])
    ratio = torch.tensor([[1.5, 0.5, 5.0, 1.0, 7.0]])
    old = torch.zeros_like(ratio)
    new = torch.log(ratio)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, st = policy_loss(new, old, A, mask)
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 3.0 - 1.0) / 4, rel=1e-5)
    assert st.tokens == 4 and st.clipped == 2 and st.dual_clipped == 1
    # without dual-clip the third token contributes 5.0
    loss2, _ = policy_loss(new, old, A, mask, dual_clip=0.0)
    assert loss2.item() == pytest.approx((-1.28 + 0.8 + 5.0 - 1.0) / 4, rel=1e-5)


def test_policy_loss_token_level_over_micro_batches():
    # splitting a batch into micro-batches with the batch's token count sums to the same loss
    torch.manual_seed(0)
    new = torch.randn(4, 6) * 0.1
    old = new.detach() + torch.randn(4, 6) * 0.1
    A = torch.tensor([1.0, -0.5, 2.0, -1.0])
    mask = (torch.rand(4, 6) > 0.3).int()
    full, _ = policy_loss(new, old, A, mask)
    n = float(mask.sum())
    parts = sum(policy_loss(new[i:i + 2], old[i:i + 2], A[i:i + 2], mask[i:i + 2], num_tokens=n)[0]
                for i in (0, 2))
    assert parts.item() == pytest.approx(full.item(), rel=1e-5)


def test_policy_loss_gradient_is_advantage_weighted():
    # at ratio 1 (on-policy) the gradient w.r.t. logprob of a token is -A / num_tokens
    lp = torch.zeros(1, 3, requires_grad=True)
    loss, _ = policy_loss(lp, torch.zeros(1, 3), torch.tensor([2.0]), torch.ones(1, 3))
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-2 / 3] * 3)


def test_policy_loss_optional_terms():
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    ent = torch.tensor([[1.0, 3.0]])
    base, _ = policy_loss(lp, lp.detach(), torch.tensor([0.0]), torch.ones(1, 2))
    assert base.item() == 0.0
    # k3: exp(ref-lp) - (ref-lp) - 1 = 0.5 + ln 2 - 1 for token 0, 0 for token 1
    kl, st = policy_loss(lp, lp.detach(), torch.tensor([0.0]), torch.ones(1, 2), ref_logprobs=ref, kl_coef=1.0)
    assert kl.item() == pytest.approx((0.5 + math.log(2) - 1) / 2, rel=1e-5)
    en, st = policy_loss(lp, lp.detach(), torch.tensor([0.0]), torch.ones(1, 2), entropy=ent, entropy_coef=0.1)
    assert en.item() == pytest.approx(-0.1 * 2.0, rel=1e-5) and st.entropy_sum == 4.0
