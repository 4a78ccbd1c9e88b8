# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   trains a small CNN with GradCAMCallback and writes TensorBoard logs + PNGs
#   make test   creates .venv, installs everything (detectron2 too), runs ruff and the tests
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install

$(STAMP): setup.cfg pyproject.toml scripts/install_detectron2.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,detectron2]"
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

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/detection.py
