# deep-kmeans — every target installs what it needs first (`setup`), so on a fresh machine `make test` alone works.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dkm-installed
APT_PACKAGES := dataset-fashion-mnist chromium
PYTEST_ARGS ?=
PROFILE ?= cpu

.PHONY: help setup system-deps figures book study references test lint bench lab clean distclean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

setup: $(STAMP) system-deps  ## venv + pip install -e .[dev,energy,distributed,onnx]; Debian packages when root (idempotent)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# the distribution was called `dkm` before 0.1.1 (a name PyPI gives to another project)
	@$(BIN)/python -m pip uninstall --quiet --yes dkm >/dev/null 2>&1 || true; rm -rf dkm.egg-info
	@echo "Installing deep-kmeans (editable) and its dependencies into $(VENV) …"
	$(BIN)/python -m pip install -qq -e '.[dev,energy,distributed,onnx]'
	@touch $(STAMP)

system-deps:  ## Debian's dataset-fashion-mnist (offline data) and chromium (PNG export, browser tests)
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "Not installed:$$missing (needs root and apt-get). Run:"; \
	  echo "  sudo apt-get update && sudo apt-get install -y$$missing"; \
	fi

figures: setup  ## run every notebook with papermill (PROFILE=cpu|smoke|paper) and write figures/
	$(BIN)/python -m dkm figures --profile $(PROFILE)

book: figures  ## the executed notebooks as an offline HTML book -> build/book/index.html
	$(BIN)/python -m dkm book --profile $(PROFILE)

study: setup  ## the budget × λ study of PROFILE (cpu: about 2 h) -> data/results/study_<profile>.csv
	$(BIN)/python -m dkm study --profile $(PROFILE)

NDF_VENV := build/nn-dataflow-venv
NDF_PINS := nn-dataflow==2.1 sympy==1.5.1

references: setup  ## nn-dataflow's own venv (sympy 1.5.1) -> its AlexNet/GoogLeNet CSVs in data/reference, R² table
	@test -x $(NDF_VENV)/bin/python || $(PYTHON) -m venv $(NDF_VENV)
	$(NDF_VENV)/bin/python -m pip install --quiet $(NDF_PINS)
	$(BIN)/python -m dkm.energy.references.nn_dataflow --venv $(NDF_VENV)
	$(BIN)/python -m dkm zigzag validate

test: setup lint  ## ruff, then the whole test suite (pytest)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup  ## ruff check + ruff format --check (line length 100, pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup  ## side-by-side speed ratios -> build/bench.json
	$(BIN)/python bench/run.py

lab: setup  ## JupyterLab on the notebooks: 127.0.0.1, a token, prints the URL (works as root)
	$(BIN)/python -m dkm lab

clean:  ## remove build artefacts (keeps .venv, data/runs)
	rm -rf build .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean  ## also remove the venv and cached runs
	rm -rf $(VENV) data/runs
