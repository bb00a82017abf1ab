"""Run by tests/rl/test_distributed.py under torchrun (2 CPU processes, gloo)."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.rl.conftest import InstantTools, scripted_policy, tiny_config  # noqa: E402
from tirl.rl import trainer as T  # noqa: E402


async def tools():
    return InstantTools()


def main(out: str) -> None:
    cfg = tiny_config(Path(out), "ddp", **{"stages.0.steps": 2, "sft.enabled": "false"})
    captured = {}
    orig = T.Trainer.arun

    async def arun(self):
        res = await orig(self)
        captured["model"] = self.model
        return res

    T.Trainer.arun = arun
    dist.init_process_group("gloo")
    res = T.train(cfg, progress=False, engine_factory=scripted_policy(), tools_factory=tools)
    flat = torch.cat([p.detach().flatten() for p in captured["model"].parameters()])
    both = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(both, flat)
    if dist.get_rank() == 0:
        Path(out, "ddp_result.json").write_text(json.dumps({
            "world": dist.get_world_size(), "same_weights": bool(torch.equal(both[0], both[1])),
            "steps": res["global_step"], "evals": res["evals"],
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
