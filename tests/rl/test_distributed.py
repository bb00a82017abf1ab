"""The trainer under torchrun: 2 CPU processes with gloo keep identical replicas."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.runs import read_metrics


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Path(__file__).with_name("_ddp_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
         str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "ddp_result.json").read_text())
    assert res["world"] == 2 and res["steps"] == 2
    assert res["same_weights"], "the two replicas diverged: gradients were not all-reduced"
    rl = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r.get("phase") == "rl"]
    # rank 0 writes the metrics once per step, with counts summed over both ranks
    assert [r["step"] for r in rl] == [1, 2]
    assert all(r["groups_kept"] == 2 for r in rl)  # problems_per_step=2 split over 2 ranks
    evals = res["evals"]
    assert evals[-1]["held_out_n"] == 2  # the held-out set was split and summed
