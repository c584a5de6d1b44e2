# qmlops: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PYTHONHASHSEED ?= 0
# `make serve`: ports on 127.0.0.1 and where pid files, logs and the Prefect database go.
export PREFECT_PORT ?= 4200
export MLFLOW_PORT ?= 5000
export QMLOPS_SERVE_DIR ?= $(CURDIR)/.qmlops/serve

.PHONY: install demo test test-slow test-all lint format lock clean ui-mlflow serve stop deploy bench bench-sweep bench-quality

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/qmlops train --dataset iris

# Tests run on TEST_WORKERS processes (pytest-xdist); most of a slow test is waiting on a
# server or a subprocess, so more workers than the 2 cores of CI still shorten the run.
# `make test` skips the tests marked slow (whole pipelines in subprocesses, the browser, Ray,
# servers killed and restarted); `make test-slow` runs them; CI (.ci/run) runs both.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15
test: install
	$(PYTEST) -m "not slow"

test-slow: install
	$(PYTEST) -m slow

test-all: test test-slow

# The speed benchmarks (gradients against PennyLane, training against qiskit-machine-learning, ideal and
# under device noise, sweep scaling); write benchmarks/RESULTS.md.
bench: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]" && $(BIN)/python benchmarks/gradient_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/device_speed.py
	$(BIN)/python benchmarks/sweep_scaling.py

# Sweep scaling: sequential vs threads vs local Ray, 8 configurations, three workloads, host probe.
bench-sweep: install
	$(BIN)/python benchmarks/sweep_scaling.py

# Model quality: quantum model (defaults) vs baselines, 9 data sets x 5 seeds.
bench-quality: install
	$(BIN)/python benchmarks/quality.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy qmlops tasks flows deployments qmlops_cli.py benchmarks

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui-mlflow: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

serve: install
	$(BIN)/python deployments/serve.py start

stop:
	$(BIN)/python deployments/serve.py stop

# Deploy prefect.yaml to $$PREFECT_API_URL; ENV=dev|prod applies deployments/environments/<ENV>.yaml.
deploy: install
	$(BIN)/python deployments/deploy.py $(if $(ENV),--env $(ENV))

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^qmlops' > constraints.txt

clean:
	rm -rf $(VENV) .prefect mlruns .pytest_cache .mypy_cache .ruff_cache
