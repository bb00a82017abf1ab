"""tirl.rl.parallel: strategies, fp32 master weights under bf16, gradients equal to a
single-process reference under DDP and FSDP2 (torchrun, 2 CPU ranks, gloo), exact FSDP resume."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.rl._parallel_worker import (build_model, fake_groups, named_grads_and_params, one_update,
                                       rl_config)
from tirl.config import ConfigError
from tirl.rl.parallel import ParallelPolicy, PolicyRoot, resolve_strategy, wrap_policy
from tirl.rl.update import make_optimizer, pad_micro_batches, pack, policy_update

WORKER = Path(__file__).with_name("_parallel_worker.py")


def _torchrun(*args: str, timeout: int = 400) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", str(WORKER), *args],
        capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_strategy_resolution_and_errors():
    assert resolve_strategy("auto", 1, False) == "single"
    assert resolve_strategy("auto", 2, True) == "ddp"
    assert resolve_strategy("fsdp", 1, True) == "fsdp"
    with pytest.raises(ConfigError, match="torchrun"):
        resolve_strategy("fsdp", 1, False)
    with pytest.raises(ConfigError, match="train.strategy=ddp or fsdp"):
        resolve_strategy("single", 2, True)


def _changed_fraction(par, steps: int = 3) -> float:
    before = {k: v.detach().float().clone() for k, v in par.model.state_dict().items()}
    opt = make_optimizer(par.root, rl_config(lr=1e-6))
    for s in range(steps):
        policy_update(par, opt, fake_groups(seed=s), rl_config(lr=1e-6), step=s, pad_id=0, device="cpu")
    after = par.model.state_dict()
    changed = sum(int((after[k].float() != before[k]).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def test_bf16_compute_keeps_fp32_master_and_changes_every_weight_at_lr_1e6():
    par = wrap_policy(build_model().to(torch.bfloat16), "single", compute_dtype=torch.bfloat16)
    assert {p.dtype for p in par.parameters()} == {torch.float32}  # the master weights
    seen = []
    par.model.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    frac = _changed_fraction(par)
    assert set(seen) == {torch.bfloat16}  # the matmuls ran in bf16
    assert frac > 0.99, frac  # measured 0.9995: every weight with a gradient moved
    # the failure this prevents: AdamW on bf16 parameters rounds 1e-6 updates away
    naive = build_model().to(torch.bfloat16)
    assert _changed_fraction(ParallelPolicy(naive, PolicyRoot(naive), "single", torch.bfloat16)) < 0.1  # 0.020


def test_padding_micro_batches_add_exactly_nothing():
    mbs = pad_micro_batches([[([5, 6, 7], [0, 1], 1.0)]], 3, pad_id=0)
    assert len(mbs) == 3 and mbs[1] == mbs[2] == [([0, 0], [0], 0.0)]
    par = wrap_policy(build_model(), "single")
    ids, attn, mask, adv = pack(mbs[1], 0, "cpu")
    lp, _ = par.logprobs(ids, attn, chunk_size=16)
    from tirl.rl.grpo import policy_loss

    loss, st = policy_loss(lp, lp.detach(), adv, mask, num_tokens=10.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and st.tokens == 0
    assert all(float(p.grad.abs().max()) == 0.0 for p in par.parameters())


def _reference(dtype=torch.float32, lr=1e-3):
    par = wrap_policy(build_model(), "single", compute_dtype=dtype)
    metrics = one_update(par, fake_groups(), rl_config(lr=lr))
    grads, params = named_grads_and_params(par)
    return metrics, grads, params


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "ddp", "fsdp+ckpt"])
def test_two_rank_gradients_equal_the_single_process_reference(tmp_path, strategy):
    """Rank 0 holds the long sequences, rank 1 the short ones (and fewer micro-batches): a
    per-rank token normalisation or a missing empty micro-batch would show here.
    ``fsdp+ckpt``: with activation checkpointing per decoder layer (recomputed in backward)."""
    _torchrun("grads", str(tmp_path), strategy, "float32")
    got = torch.load(tmp_path / f"grads_{strategy}_float32.pt")
    metrics, grads, params = _reference()
    assert got["master"] == ["torch.float32"] and got["grads"].keys() == grads.keys()
    # tolerance: 1e-5 of the largest gradient entry (measured 1.5e-7 / 2.0e-7: summation order only)
    for k, g in grads.items():
        scale = float(g.abs().max()) or 1.0
        assert float((got["grads"][k] - g).abs().max()) <= 1e-5 * scale, k
        assert torch.allclose(got["params"][k], params[k], atol=1e-6, rtol=0), k
    assert got["metrics"]["policy_tokens"] == metrics["policy_tokens"]
    assert got["metrics"]["grad_norm"] == pytest.approx(metrics["grad_norm"], rel=1e-6)
    assert got["metrics"]["loss"] == pytest.approx(metrics["loss"], rel=1e-6)
    from tirl.rl.update import micro_batches, training_items

    per_rank = [len(micro_batches(training_items(fake_groups()[r::2], "mean_std"), 64)) for r in (0, 1)]
    assert per_rank[0] != per_rank[1]  # the short rank ran empty micro-batches to line up
    assert got["metrics"]["micro_batches"] == sum(per_rank)
    # rank 0 ran max(per_rank) micro-batches: old log-probs + training forward (+ the
    # recomputed forward in backward with activation checkpointing)
    assert got["mlp_calls"] == max(per_rank) * (3 if strategy.endswith("+ckpt") else 2)


@pytest.mark.slow
def test_fsdp_bf16_shards_are_fp32_compute_is_bf16_and_every_weight_moves(tmp_path):
    _torchrun("grads", str(tmp_path), "fsdp", "bfloat16")
    got = torch.load(tmp_path / "grads_fsdp_bfloat16.pt")
    assert got["master"] == ["torch.float32"]  # sharded parameters = fp32 master weights
    assert got["compute"] == ["torch.bfloat16"]  # all-gathered in bf16 for the forward
    start = {k: v.float() for k, v in build_model().state_dict().items()}
    moved = sum(int((got["params"][k] != start[k]).sum()) for k in got["params"])
    assert moved / sum(v.numel() for v in got["params"].values()) > 0.99  # lr 1e-6, one step
    _, ref, _ = _reference()  # bf16 gradients against the fp32 reference: within 2% of max |g|
    for k, g in ref.items():
        assert float((got["grads"][k] - g).abs().max()) <= 2e-2 * float(g.abs().max()), k


@pytest.mark.slow
def test_fsdp_resume_two_plus_one_equals_three_per_rank_cursor_and_rng(tmp_path):
    """Under fsdp with bf16 compute: 3 steps straight == 2 steps, a checkpoint, resume 1,
    for the fp32 master weights and every rank's data cursor, epoch and RNG states."""
    _torchrun("train", str(tmp_path), "bfloat16", timeout=600)
    a = torch.load(tmp_path / "master_straight.pt")
    b = torch.load(tmp_path / "master_split.pt")
    assert a.keys() == b.keys() and all(v.dtype == torch.float32 for v in a.values())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ranks = json.loads((tmp_path / "train_report.json").read_text())
    assert len(ranks) == 2
    for rep in ranks:
        assert rep["straight"]["step"] == rep["split"]["step"] == 3
        assert rep["straight"]["rank_state"] == rep["split"]["rank_state"]
        # the resumed run still computes in bf16 over fp32 master shards
        assert rep["split"]["master"] == ["torch.float32"] and rep["split"]["compute"] == ["torch.bfloat16"]
    # the ranks' RoC sampling streams differ, so equality above means each restored its own
    assert ranks[0]["split"]["rank_state"]["data_rng"] != ranks[1]["split"]["rank_state"]["data_rng"]
    from safetensors.torch import load_file

    root = tmp_path / "split" / "checkpoints"
    ck = root / (root / "latest").read_text().strip()
    export = load_file(str(ck / "model.safetensors"))
    assert {v.dtype for v in export.values()} == {torch.bfloat16}  # the HF export is in model.dtype
    assert "lm_head.weight" not in export  # tied to the embeddings: stored once, as save_pretrained does
    assert sorted(p.name for p in ck.glob("rank_*.pt")) == ["rank_00000.pt", "rank_00001.pt"]
