# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   trains a small CNN with GradCAMCallback and writes TensorBoard logs + PNGs
#   make test   creates .venv, installs everything (detectron2 too), runs ruff and the tests
# The test environment is pinned by constraints.txt (every package, the versions the tests
# pass with); setup.cfg keeps ranges for users. `make lock` regenerates constraints.txt from a
# fresh resolve; `make test-slow` runs the sweeps marked @pytest.mark.slow (left out of `make test`).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: demo test test-slow lint bench install lock

$(STAMP): setup.cfg pyproject.toml constraints.txt scripts/install_detectron2.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[test,detectron2]"
	bash scripts/install_detectron2.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/lightning_shapes.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# A fresh resolve in a throwaway venv under /tmp (a few minutes), written to constraints.txt.
lock:
	bash scripts/lock.sh $(PYTHON)

bench: $(STAMP)
	$(PIP) -e ".[bench]"
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/detection.py
