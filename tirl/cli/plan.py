"""`tirl plan`: will a config fit on N GPUs of M GiB? Memory per GPU, term by term."""

from __future__ import annotations

import argparse

from tirl.cli.common import add_config_args, print_config, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory per GPU of a training config (params, grads, optimizer, "
                       "activations, KV cache left) and whether it fits",
                       description="Plan a config's memory per GPU: parameters, gradients, fp32 master "
                       "weights, optimizer state, activations of one micro-batch (with/without "
                       "checkpointing), the chunked loss, and the KV cache left for colocated rollouts. "
                       "Exit 0 when it fits, 1 when not. See docs/scale.md.")
    add_config_args(p, positional="CONFIG")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    p.add_argument("--gpu-mem", type=float, required=True, metavar="GiB", help="memory of one GPU in GiB")
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"],
                   help="default: the config's train.strategy (single on one GPU, else fsdp)")
    p.add_argument("--offload-optimizer", action="store_true", help="optimizer state in CPU memory")
    p.add_argument("--rollout-kv-tokens", type=int, help="KV tokens the colocated rollouts need "
                   "(default: rl.rollout_batch × the largest stage budget)")
    p.add_argument("--rollout-tp", type=int, default=1, help="tensor-parallel degree of a colocated engine")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from tirl.config import ConfigError

    cfg, _ = resolve_config(args, config_required=True)
    if args.print_config:
        return print_config(cfg)
    if args.gpus < 1 or args.gpu_mem <= 0:
        raise ConfigError(f"--gpus {args.gpus} / --gpu-mem {args.gpu_mem}: give at least 1 GPU and a positive size")
    from tirl.plan import run_plan

    strategy = args.strategy or getattr(getattr(cfg, "train", None), "strategy", None)
    return run_plan(cfg, gpus=args.gpus, gpu_mem_gib=args.gpu_mem, as_json=args.json, strategy=strategy,
                    offload_optimizer=args.offload_optimizer, rollout_kv_tokens=args.rollout_kv_tokens,
                    rollout_tp=args.rollout_tp)
