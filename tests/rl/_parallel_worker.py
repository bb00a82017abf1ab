"""Run by tests/rl/test_parallel*.py under torchrun (2 CPU processes, gloo).

``grads OUT STRATEGY[+ckpt] DTYPE``: one policy update on this rank's share of a fixed global batch;
rank 0 writes the full gradients, weights and metrics to ``OUT/grads_<STRATEGY>_<DTYPE>.pt``.
The single-process reference is :func:`one_update` over the whole batch, in the test process.

``train OUT DTYPE``: the trainer under ``train.strategy=fsdp``, three ways in one process
group: 3 steps straight, and 2 steps + resume 1. Rank 0 writes the fp32 master weights,
each rank its checkpoint files' positions, and the dtypes seen after the resume.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tirl.config.sections import RLConfig  # noqa: E402
from tirl.rl.parallel import wrap_policy  # noqa: E402
from tirl.rl.update import make_optimizer, policy_update  # noqa: E402

VOCAB = 64


def build_model(seed: int = 0):
    """A tiny random Llama (2 layers, tied embeddings), the same in every process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=None, eos_token_id=1)
    return LlamaForCausalLM(cfg)


def fake_groups(n_groups: int = 4, size: int = 4, seed: int = 1) -> list[list]:
    """Groups of trajectories with rewards 0/1; even groups are long, odd ones short, so the
    two ranks (groups[r::2]) hold very different numbers of policy tokens."""
    rng = random.Random(seed)
    groups = []
    for gi in range(n_groups):
        long = gi % 2 == 0
        g = []
        for k in range(size):
            plen, rlen = rng.randint(3, 6), rng.randint(20, 40) if long else rng.randint(2, 5)
            resp = [rng.randint(2, VOCAB - 1) for _ in range(rlen)]
            mask = [1 if rng.random() > 0.2 else 0 for _ in range(rlen)]  # some tool tokens
            g.append(SimpleNamespace(prompt_ids=[rng.randint(2, VOCAB - 1) for _ in range(plen)],
                                     response_ids=resp, response_mask=mask, reward=float(k % 2), meta={}))
        groups.append(g)
    return groups


def rl_config(**kw) -> RLConfig:
    base = dict(lr=1e-3, warmup_steps=0, grad_clip=0.0, micro_batch_tokens=64, loss_chunk_tokens=16)
    base.update(kw)
    return RLConfig(**base)


def one_update(par, groups, rl) -> dict:
    opt = make_optimizer(par.root, rl)
    return policy_update(par, opt, groups, rl, step=0, pad_id=0, device=torch.device("cpu"))


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def named_grads_and_params(par) -> tuple[dict, dict]:
    grads, params = {}, {}
    for name, p in par.root.named_parameters():
        key = name.removeprefix("module.").removeprefix("policy.")
        grads[key] = _full(p.grad).detach().float().clone()
        params[key] = _full(p.detach()).float().clone()
    return grads, params


def _grads(out: Path, strategy: str, dtype: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    compute = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = build_model()
    if strategy.endswith("+ckpt"):  # activation checkpointing per decoder layer
        model.gradient_checkpointing_enable()
    par = wrap_policy(model, strategy.removesuffix("+ckpt"), compute_dtype=compute)
    seen = []  # the dtype of a projection's weight while the forward runs
    q = par.model.model.layers[0].self_attn.q_proj
    q.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
    mlp_calls = []  # forwards of one layer's MLP: a recomputation in backward shows as an extra
    mlp = par.model.model.layers[0].mlp  # call (module hooks do not run again then; forward does)
    mlp_forward = mlp.forward

    def counted(*a, **k):
        mlp_calls.append(1)
        return mlp_forward(*a, **k)

    mlp.forward = counted
    groups = fake_groups()
    lr = 1e-6 if dtype == "bfloat16" else 1e-3
    metrics = one_update(par, groups[rank::world], rl_config(lr=lr))
    master = sorted({str(p.dtype) for p in par.root.parameters()})
    grads, params = named_grads_and_params(par)
    if rank == 0:
        torch.save({"grads": grads, "params": params, "metrics": metrics, "master": master,
                    "compute": sorted(set(seen)), "mlp_calls": len(mlp_calls)},
                   out / f"grads_{strategy}_{dtype}.pt")


def _train(out: Path, dtype: str) -> None:
    from tests.rl.conftest import InstantTools, scripted_policy, tiny_config
    from tirl.rl import trainer as T

    async def tools():
        return InstantTools()

    captured = {}
    orig = T.Trainer.arun

    async def arun(self):
        res = await orig(self)
        captured["trainer"] = self
        return res

    T.Trainer.arun = arun
    rank = dist.get_rank()
    extra = {"sft.enabled": "false", "train.strategy": "fsdp", "model.dtype": dtype, "stages.0.steps": 3}
    report: dict = {}
    for name, stops in (("straight", [None]), ("split", [2, None])):
        for stop in stops:
            cfg = tiny_config(out, name, **extra)
            T.train(cfg, progress=False, engine_factory=scripted_policy(), tools_factory=tools, stop_after=stop)
        tr = captured["trainer"]
        params = tr.par.full_state_dict()  # collective; rank 0 gets the fp32 master weights
        ck = tr.run.checkpoints / (tr.run.checkpoints / "latest").read_text().strip()
        mine = torch.load(ck / f"rank_{rank:05d}.pt", weights_only=False)
        seen = []
        q = tr.model.model.layers[0].self_attn.q_proj
        h = q.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
        with torch.no_grad():
            tr.par.logprobs(torch.tensor([[2, 3, 4, 5]]), torch.ones(1, 4, dtype=torch.long), chunk_size=16)
        h.remove()
        report[name] = {"rank_state": {"cursor": mine["cursor"], "epoch": mine["epoch"],
                                       "data_rng": repr(mine["data_rng"]), "python": repr(mine["rng"]["python"]),
                                       "torch": mine["rng"]["torch"].tolist()},
                        "master": sorted({str(p.dtype) for g in tr.optimizer.param_groups for p in g["params"]}),
                        "compute": sorted(set(seen)), "step": tr.state.global_step}
        if rank == 0:
            torch.save(params, out / f"master_{name}.pt")
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, report)
    if rank == 0:
        (out / "train_report.json").write_text(json.dumps(parts))


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    try:
        if mode == "grads":
            _grads(out, sys.argv[3], sys.argv[4])
        elif mode == "train":
            _train(out, sys.argv[3])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
