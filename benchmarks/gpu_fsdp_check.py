"""GPU check of the paper-scale training path on one GPU; prints one JSON object.

A Qwen2.5-1.5B-shaped model built from a config (random init, nothing downloaded) is wrapped
by :func:`tirl.rl.parallel.wrap_policy` exactly as the trainer does with
``train.strategy = "fsdp"``, ``model.dtype = "bfloat16"`` and activation checkpointing
(FSDP2 on one rank: bf16 compute, fp32 master weights and AdamW state). Then:

* one RL update (:func:`tirl.rl.update.policy_update`: old log-probs, chunked loss, backward,
  AdamW) on ``--tokens`` tokens of random trajectories (default 65,536): tokens/s, an MFU
  estimate (``8 · params · tokens`` FLOPs — forward, backward and the recomputed forward of
  activation checkpointing — plus the old-log-prob forward, ``2 · params · tokens``, over
  ``--peak-tflops``), and peak GPU memory;
* rollout generation at batch ``--batch`` (default 64): :class:`~tirl.engines.local.LocalEngine`
  over the unsharded policy (inside ``generation_weights()``, as in training) against HF
  ``generate`` on a plain bf16 copy of the same weights, in tokens/s — the ratio is the
  comparison (same run, same GPU) — and the time ``generation_weights()`` takes to unshard.

``--tiny`` runs the same code on CPU with a tiny model and a few hundred tokens (seconds), so
the script is tested without a GPU (tests/rl/test_parallel_gpu_check.py). No timing from
``--tiny`` means anything.

Usage: ``python benchmarks/gpu_fsdp_check.py`` (GPU) or ``python benchmarks/gpu_fsdp_check.py --tiny``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def qwen25_15b_config(tiny: bool):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=True, rope_theta=1e6)
    # Qwen2.5-1.5B's published shape
    return Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                       tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)


class _Tok:
    """What LocalEngine needs from a tokenizer when no stop strings are given."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


def random_groups(total_tokens: int, seq_len: int, group_size: int, vocab: int, seed: int = 0) -> list[list]:
    rng = random.Random(seed)
    n_seqs = max(group_size, total_tokens // seq_len)
    groups, g = [], []
    prompt = seq_len // 8
    for i in range(n_seqs):
        resp = [rng.randrange(1, vocab) for _ in range(seq_len - prompt)]
        g.append(SimpleNamespace(prompt_ids=[rng.randrange(1, vocab) for _ in range(prompt)], response_ids=resp,
                                 response_mask=[1] * len(resp), reward=float(i % 2), meta={}))
        if len(g) == group_size:
            groups.append(g)
            g = []
    return groups


async def _engine_tokens_per_s(engine, prompts, new_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(engine.generate(p, new_tokens, temperature=1.0) for p in prompts))
    dt = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in outs)
    return n / dt, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model: checks the script runs")
    ap.add_argument("--tokens", type=int, default=None, help="tokens in the RL update (default 65536; tiny 512)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per trajectory (default 2048; tiny 64)")
    ap.add_argument("--micro-batch-tokens", type=int, default=None, help="default 16384; tiny 256")
    ap.add_argument("--batch", type=int, default=None, help="generation batch (default 64; tiny 4)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (default 256; tiny 8)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak for the MFU estimate (H100/H200 SXM: 989)")
    args = ap.parse_args(argv)
    tiny = args.tiny
    tokens = args.tokens or (512 if tiny else 65536)
    seq_len = args.seq_len or (64 if tiny else 2048)
    mbt = args.micro_batch_tokens or (256 if tiny else 16384)
    batch = args.batch or (4 if tiny else 64)
    new_tokens = args.new_tokens or (8 if tiny else 256)
    if not tiny and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no GPU; run with --tiny to check the script on CPU"}))
        return 0
    device = torch.device("cpu" if tiny else "cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if tiny else "nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        return _run(args, tiny, tokens, seq_len, mbt, batch, new_tokens, device)
    finally:
        dist.destroy_process_group()


def _run(args, tiny, tokens, seq_len, mbt, batch, new_tokens, device) -> int:
    from transformers import Qwen2ForCausalLM

    from tirl.config.sections import RLConfig
    from tirl.engines.local import LocalEngine
    from tirl.rl.parallel import wrap_policy
    from tirl.rl.update import make_optimizer, policy_update

    cfg = qwen25_15b_config(tiny)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)  # fp32: becomes the master weights
    n_params = sum(p.numel() for p in model.parameters())
    model.gradient_checkpointing_enable()
    par = wrap_policy(model, "fsdp", compute_dtype=torch.bfloat16, device=device)
    out: dict = {"model": "tiny-qwen2" if tiny else "Qwen2.5-1.5B-shaped", "params": n_params,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "strategy": "fsdp", "compute_dtype": "bfloat16",
                 "master_dtype": str({p.dtype for p in par.parameters()}.pop()), "activation_checkpointing": True}
    rl = RLConfig(lr=1e-6, warmup_steps=0, micro_batch_tokens=mbt, loss_chunk_tokens=1024 if not tiny else 32)
    groups = random_groups(tokens, seq_len, 4, cfg.vocab_size)
    opt = make_optimizer(par.root, rl)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    m = policy_update(par, opt, groups, rl, step=0, pad_id=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n_tok = sum(len(t.prompt_ids) + len(t.response_ids) for g in groups for t in g)
    flops = (8 + 2) * n_params * n_tok  # fwd+bwd+recompute (8) + old-log-prob forward (2)
    out["update"] = {"tokens": n_tok, "seconds": round(dt, 3), "tokens_per_s": round(n_tok / dt, 1),
                     "micro_batches": m["micro_batches"], "grad_norm": m["grad_norm"],
                     "mfu_estimate": round(flops / dt / (args.peak_tflops * 1e12), 4),
                     "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                     if device.type == "cuda" else None}
    # generation: LocalEngine over the unsharded policy vs HF generate on a plain bf16 copy
    rng = random.Random(1)
    prompts = [[rng.randrange(1, cfg.vocab_size) for _ in range(64 if not tiny else 8)] for _ in range(batch)]
    plain = Qwen2ForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).eval()
    plain.load_state_dict({k: v.to(torch.bfloat16) for k, v in par.full_state_dict().items()})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_unshard = time.perf_counter()
    with par.generation_weights():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_unshard = time.perf_counter() - t_unshard  # all-gather of every FSDP module, bf16
        engine = LocalEngine(par.model, _Tok(), max_batch=batch, max_seq_len=len(prompts[0]) + new_tokens + 8,
                             seed=0, threads=None if device.type == "cuda" else 1)
        try:
            asyncio.run(_engine_tokens_per_s(engine, prompts[:2], 4))  # warm-up
            local_tps, local_n = asyncio.run(_engine_tokens_per_s(engine, prompts, new_tokens))
        finally:
            engine.close()
    ids = torch.tensor(prompts, device=device)
    with torch.inference_mode():
        plain.generate(ids[:2], attention_mask=torch.ones_like(ids[:2]), max_new_tokens=4, do_sample=True,
                       pad_token_id=0)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=True, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        hf_dt = time.perf_counter() - t0
    hf_n = int((gen.shape[1] - ids.shape[1]) * gen.shape[0])
    out["generation"] = {"batch": batch, "new_tokens": new_tokens, "local_engine_tokens_per_s": round(local_tps, 1),
                         "local_engine_tokens": local_n, "hf_generate_tokens_per_s": round(hf_n / hf_dt, 1),
                         "ratio_local_over_hf": round(local_tps / (hf_n / hf_dt), 3),
                         "unshard_seconds": round(t_unshard, 4),
                         "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                         if device.type == "cuda" else None}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
