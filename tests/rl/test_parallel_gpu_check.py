"""benchmarks/gpu_fsdp_check.py runs (on CPU with --tiny) and prints the numbers it promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_fsdp_check.py"


@pytest.mark.slow
def test_gpu_check_script_runs_tiny_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["strategy"] == "fsdp" and out["compute_dtype"] == "bfloat16"
    assert out["master_dtype"] == "torch.float32" and out["activation_checkpointing"] is True
    up = out["update"]
    assert up["tokens"] == 512 and up["tokens_per_s"] > 0 and up["grad_norm"] > 0 and up["micro_batches"] >= 2
    gen = out["generation"]
    assert gen["local_engine_tokens"] == 4 * 8  # every row generated its tokens
    assert gen["local_engine_tokens_per_s"] > 0 and gen["hf_generate_tokens_per_s"] > 0
