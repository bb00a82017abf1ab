"""The opt-in real-vLLM suite: tests marked ``vllm`` run only when told where vLLM is.

* ``TIRL_VLLM_PYTHON=/path/to/vllm-venv/bin/python``: the suite starts one server for the
  session (minutes on a CPU) from ``TIRL_VLLM_MODEL_DIR`` (exported there when missing;
  default: a temporary directory) and stops it at the end. ``TIRL_VLLM_ARGS`` adds server
  arguments (e.g. ``--enforce-eager``); ``TIRL_VLLM_START_TIMEOUT`` bounds the start (s).
* ``TIRL_VLLM_URL=http://127.0.0.1:8000`` with ``TIRL_VLLM_MODEL_DIR``: a server already
  running (with ``VLLM_SERVER_DEV_MODE=1``) that serves that directory as ``smollm2``.

Without either, ``make test`` skips them (``make test-vllm`` sets them up).
"""

import os
import shlex
from pathlib import Path

import pytest

from tests.vllm.server import VLLMServer, export_smollm2, start_vllm

OPT_IN = "TIRL_VLLM_PYTHON", "TIRL_VLLM_URL"


def pytest_collection_modifyitems(config, items):
    if any(os.environ.get(k) for k in OPT_IN):
        return
    skip = pytest.mark.skip(reason="needs a real vLLM server: run `make test-vllm` (or set "
                                   "TIRL_VLLM_PYTHON / TIRL_VLLM_URL, see tests/vllm/conftest.py)")
    for item in items:
        if "vllm" in item.keywords and item.get_closest_marker("vllm"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    url = os.environ.get("TIRL_VLLM_URL")
    model_dir = os.environ.get("TIRL_VLLM_MODEL_DIR")
    if url:
        if not model_dir:
            pytest.fail("TIRL_VLLM_URL needs TIRL_VLLM_MODEL_DIR: the directory that server serves")
        yield VLLMServer(url.rstrip("/").removesuffix("/v1"), Path(model_dir))
        return
    python = os.environ["TIRL_VLLM_PYTHON"]
    if not Path(python).is_file():
        pytest.fail(f"TIRL_VLLM_PYTHON={python!r} is not a file; run `make test-vllm`, which "
                    "creates vLLM's virtual environment")
    root = tmp_path_factory.mktemp("vllm")
    model = export_smollm2(model_dir or root / "smollm2")
    server = start_vllm(python, model, root / "server.log",
                        timeout_s=float(os.environ.get("TIRL_VLLM_START_TIMEOUT", "1200")),
                        extra_args=shlex.split(os.environ.get("TIRL_VLLM_ARGS", "")))
    print(f"\n[vllm] started in {server.start_s:.0f} s; log {server.log}")
    try:
        yield server
    finally:
        server.stop()
