"""The capacity planner: parameter counts exact, hand-worked terms, and a measured CPU run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.plan import GIB, QWEN3_14B, ModelShape, activation_bytes_per_token_layer, format_plan, plan_memory

ROOT = Path(__file__).resolve().parents[1]


def test_param_counts_match_transformers_exactly():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    for tied in (True, False):
        cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
        assert ModelShape.from_hf_config(cfg).params() == sum(p.numel() for p in model.parameters())
    q = Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    shape = ModelShape.from_hf_config(q)
    assert shape.qk_norm and shape.q_dim == 64
    assert shape.params() == sum(p.numel() for p in Qwen3ForCausalLM(q).parameters())


def test_qwen3_14b_shape():
    # the model card says 14.8B parameters; KV cache 2·40 layers·8 heads·128·2 bytes = 160 KiB/token
    assert QWEN3_14B.params() == pytest.approx(14.77e9, rel=1e-3)
    p = plan_memory(QWEN3_14B, strategy="fsdp", gpus=64, gpu_mem_gib=192)
    assert p.kv_bytes_per_token == 160 * 1024


def test_hand_worked_state_bytes():
    shape = ModelShape(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=128, vocab=1000, tied_embeddings=True)
    P = shape.params()
    assert P == 1000 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    single = plan_memory(shape, dtype="bfloat16", strategy="single", gpus=1, gpu_mem_gib=1, reserve_gib=0)
    # mixed precision: bf16 params + bf16 grads + fp32 master + AdamW m, v = 16 bytes/param
    assert (single.parameters, single.gradients, single.master_weights, single.optimizer_state) == (
        2 * P, 2 * P, 4 * P, 8 * P)
    fsdp = plan_memory(shape, dtype="bfloat16", strategy="fsdp", gpus=8, gpu_mem_gib=1, reserve_gib=0)
    assert fsdp.parameters == 2 * P // 8 and fsdp.optimizer_state == 8 * P // 8
    assert fsdp.fsdp_working == 3 * max(shape.layer_params(), 1000 * 64) * 2
    ddp = plan_memory(shape, dtype="bfloat16", strategy="ddp", gpus=8, gpu_mem_gib=1, reserve_gib=0)
    assert ddp.optimizer_state == 8 * P and ddp.fsdp_working == 0
    fp32 = plan_memory(shape, dtype="float32", strategy="single", gpus=1, gpu_mem_gib=1, reserve_gib=0)
    assert fp32.master_weights == 0 and fp32.parameters == 4 * P
    off = plan_memory(shape, dtype="bfloat16", strategy="single", gpus=1, gpu_mem_gib=1, reserve_gib=0,
                      offload_optimizer=True)
    assert off.optimizer_state == 0 and off.master_weights == 0 and off.host_offload == 12 * P


def test_checkpointing_chunked_loss_and_rollout_terms():
    shape = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1000)
    b, N = 2, 1000
    per_layer = activation_bytes_per_token_layer(shape, b)
    assert per_layer == 2 * (4 * 128 + 5 * 64 + 4 * 32) + 24 * 64 + 4 * 4
    on = plan_memory(shape, micro_batch_tokens=N, activation_checkpointing=True, gpu_mem_gib=1, reserve_gib=0,
                     loss_chunk_tokens=100)
    off = plan_memory(shape, micro_batch_tokens=N, activation_checkpointing=False, gpu_mem_gib=1, reserve_gib=0,
                      loss_chunk_tokens=100)
    assert on.activations == N * 2 * 64 * b + N * 64 * b  # layer inputs + embedding output
    assert off.activations == N * 2 * per_layer + N * 64 * b
    assert on.activations_working - off.activations_working == N * per_layer
    # chunked loss: final hidden + logprob vectors + one [100 × 1000] chunk at 2·b + 8 bytes + fp32 lm_head grad
    assert on.loss_memory == N * 64 * b + 3 * N * 4 + 100 * 1000 * 12 + 4 * 1000 * 64
    naive = plan_memory(shape, micro_batch_tokens=N, loss="naive", with_entropy=True, gpu_mem_gib=1, reserve_gib=0)
    assert naive.loss_memory == N * 64 * b + 3 * N * 4 + N * 1000 * (6 * 4 + 2)
    r = plan_memory(shape, gpu_mem_gib=1, reserve_gib=0, rollout_kv_tokens=500, rollout_tp=2)
    assert r.kv_bytes_per_token == 2 * 2 * 32 * 2 and r.kv_cache_needed == 500 * 256
    assert r.rollout_weights == shape.params() * 2 // 2
    assert r.kv_cache_free == GIB - (r.parameters + r.master_weights + r.optimizer_state) - r.rollout_weights
    shared = plan_memory(shape, gpu_mem_gib=1, reserve_gib=0, rollout_kv_tokens=500, rollout_shares_weights=True)
    assert shared.rollout_weights == 0


def test_verdict_and_hints():
    big = plan_memory(QWEN3_14B, strategy="fsdp", gpus=64, gpu_mem_gib=80, micro_batch_tokens=16384,
                      activation_checkpointing=False, loss="naive", with_entropy=True)
    assert not big.fits and not big.training_fits
    text = format_plan(big)
    assert "DOES NOT FIT" in text and "activation checkpointing" in text and "chunked loss" in text
    ok = plan_memory(QWEN3_14B, strategy="fsdp", gpus=64, gpu_mem_gib=80, micro_batch_tokens=16384,
                     rollout_kv_tokens=200_000)
    assert ok.fits and "verdict: fits" in format_plan(ok)
    kv = plan_memory(QWEN3_14B, strategy="fsdp", gpus=64, gpu_mem_gib=80, rollout_kv_tokens=2_000_000)
    assert kv.training_fits and not kv.rollout_fits and "KV cache" in kv.notes[-1]
    assert json.dumps(ok.to_dict())  # serialisable for machine-readable output


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="fp8"), "dtype='fp8'"),
    (dict(strategy="zero3"), "strategy='zero3'"),
    (dict(strategy="single", gpus=4), "gpus=4"),
    (dict(micro_batch_tokens=0), "micro_batch_tokens=0"),
    (dict(loss="fused"), "loss='fused'"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_memory(QWEN3_14B, **kwargs)
    with pytest.raises(ValueError, match="kv_heads"):
        ModelShape(hidden=64, layers=1, heads=4, kv_heads=3, intermediate=8, vocab=10)


MEASURE = r'''
import json, os, resource, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from tirl.rl.logprobs import token_logprobs

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

H, L, heads, kv, I, V, B, T, ckpt = map(int, sys.argv[1:10])
torch.set_num_threads(2)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=heads,
                  num_key_value_heads=kv, max_position_embeddings=T, tie_word_embeddings=False, use_cache=False)
ids = torch.randint(0, V, (B, T))
adv = torch.randn(B, T - 1)
# run the code paths once on a throwaway model so their one-off buffers are in the baseline
w = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=T))
token_logprobs(w, ids[:, :8])[0].sum().backward()
del w
base = rss()
def hwm():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))
try:  # reset the high-water mark to the current RSS: imports and the warm-up do not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = hwm() <= base + (64 << 20)
except OSError:
    reset = False
before_max = base if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = LlamaForCausalLM(cfg).float()
if ckpt:
    model.gradient_checkpointing_enable()
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
for step in range(2):  # the second step has AdamW state alive during forward/backward (steady state)
    lp, _ = token_logprobs(model, ids)
    (-(lp * adv).mean()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
peak = hwm() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak - base, "measured": peak > before_max}))
'''


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_matches_a_measured_cpu_run(tmp_path, checkpointing):
    """A tiny Llama, fp32, two forward+backward+AdamW steps with the chunked loss, in a fresh
    process: peak resident memory above the pre-model baseline (glibc serving every tensor
    from its own mmap, so RSS follows live tensors) vs the plan's training peak (reserve 0)."""
    H, L, heads, kv, I, V, B, T = 256, 4, 8, 4, 688, 8000, 2, 512
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="2",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(script), *map(str, (H, L, heads, kv, I, V, B, T, int(checkpointing)))],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["measured"], "the run never rose above the process's earlier peak; nothing was measured"
    shape = ModelShape(hidden=H, layers=L, heads=heads, kv_heads=kv, intermediate=I, vocab=V)
    plan = plan_memory(shape, dtype="float32", strategy="single", gpus=1, gpu_mem_gib=64,
                       micro_batch_tokens=B * T, activation_checkpointing=checkpointing, reserve_gib=0)
    ratio = plan.training_peak / got["peak"]
    assert 0.85 <= ratio <= 1.15, f"planned {plan.training_peak / 2**20:.1f} MiB vs measured {got['peak'] / 2**20:.1f} MiB"


def test_plan_from_configs(tmp_path):
    import io

    from tirl.config import load_config
    from tirl.plan import plan_from_config, run_plan, shape_from_model_config

    cfg = load_config("rstar2-14b", [])
    assert shape_from_model_config(cfg.model) == QWEN3_14B
    plan = plan_from_config(cfg, gpus=64, gpu_mem_gib=192)
    assert plan.strategy == "fsdp" and plan.dtype == "bfloat16" and plan.activation_checkpointing
    assert plan.micro_batch_tokens == cfg.rl.micro_batch_tokens
    from tirl.config import resolve_sampling

    budget = max(resolve_sampling(cfg, "train", s).max_tokens for s in cfg.stages)
    assert plan.kv_cache_needed == cfg.rl.rollout_batch * budget * 160 * 1024
    buf = io.StringIO()
    assert run_plan(cfg, gpus=64, gpu_mem_gib=192, out=buf) == 0 and "verdict: fits" in buf.getvalue()
    buf = io.StringIO()
    assert run_plan(cfg, gpus=64, gpu_mem_gib=80, out=buf, as_json=True) == 1
    d = json.loads(buf.getvalue())
    assert d["training_fits"] and not d["rollout_fits"] and d["shape"]["hidden"] == 5120
    demo = load_config("demo", [])
    assert plan_from_config(demo, gpus=1, gpu_mem_gib=8).strategy == "single"
    remote = load_config("demo", ["model.base_url=http://localhost:8000/v1"])
    rp = plan_from_config(remote, gpus=1, gpu_mem_gib=8)
    assert rp.kv_cache_needed == 0 and "not planned here" in rp.notes[-1]

    from transformers import LlamaConfig

    LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path)
    local = load_config("demo", [f"model.path={tmp_path}"])
    assert shape_from_model_config(local.model) == ModelShape(32, 2, 4, 2, 64, 100, head_dim=8)
    missing = load_config("demo", [f"model.path={tmp_path / 'nope'}"])
    with pytest.raises(ValueError, match="no config.json there"):
        shape_from_model_config(missing.model)
