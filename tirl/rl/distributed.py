"""The few collectives the trainer needs, as no-ops in a single process.

Under ``torchrun`` the trainer joins the process group (gloo on CPU, nccl on GPUs); each
rank rolls out its own share of problems and the ranks agree on counts (sums) and small
Python objects (gathers). Gradients are not reduced here: the model wrapper
(:mod:`tirl.rl.parallel`, DDP or FSDP2) does that.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def dist():
    """``torch.distributed`` when a process group is initialised, else None."""
    import torch.distributed as d

    return d if d.is_available() and d.is_initialized() else None


def rank_world() -> tuple[int, int]:
    d = dist()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def maybe_init_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun; True if this call did."""
    import torch.distributed as d

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not d.is_initialized():
        if torch.cuda.is_available():  # one GPU per rank: LOCAL_RANK's
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        d.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


def local_device(kind: str) -> torch.device:
    """This rank's device for ``kind`` ("cpu" or "cuda"): under torchrun, cuda:LOCAL_RANK."""
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(kind)


def _comm_device(d) -> torch.device:
    """Where a collective's tensor must live: the current GPU under nccl, else the CPU."""
    if d.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    d = dist()
    if not d:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(d))
    d.all_reduce(t)
    return t.tolist()


def all_max(value: int) -> int:
    """The largest ``value`` over ranks (e.g. micro-batches, so every rank runs as many)."""
    d = dist()
    if not d:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(d))
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return int(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    d = dist()
    if not d:
        return [obj]
    out: list[Any] = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def barrier() -> None:
    d = dist()
    if d:
        d.barrier()
