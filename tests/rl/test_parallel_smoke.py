"""configs/smoke.toml under torchrun with train.strategy=fsdp through the CLI: it runs (SFT,
rollouts with the in-process engine on unsharded weights, checkpoints), a resume from the
step-1 checkpoint rewrites step 2 exactly (export and each rank's position and RNGs), and
the export loads as a Hugging Face model."""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _train(out: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "-m", "tirl.cli", "train", str(ROOT / "configs" / "smoke.toml"),
         "train.strategy=fsdp", f"run.output_dir={out}"],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_smoke_recipe_fsdp_two_ranks_runs_resumes_exactly_and_exports(tmp_path):
    from safetensors.torch import load_file

    _train(tmp_path)
    ck = tmp_path / "smoke" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_000002"
    first = tmp_path / "first"
    shutil.copytree(ck / "step_000002", first)
    shutil.rmtree(ck / "step_000002")  # as if the run had stopped after step 1
    (ck / "latest").write_text("step_000001\n")
    _train(tmp_path)
    again = ck / "step_000002"
    a, b = load_file(str(first / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for r in (0, 1):
        x = torch.load(first / f"rank_0000{r}.pt", weights_only=False)
        y = torch.load(again / f"rank_0000{r}.pt", weights_only=False)
        assert (x["cursor"], x["epoch"], x["data_rng"]) == (y["cursor"], y["epoch"], y["data_rng"])
        assert x["rng"]["python"] == y["rng"]["python"] and torch.equal(x["rng"]["engine"], y["rng"]["engine"])
    from tirl.rl.checkpoint import load_checkpoint_model

    model, tok = load_checkpoint_model(again)  # what tirl serve / tirl eval load
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == model.config.vocab_size
