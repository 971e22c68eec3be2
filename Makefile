# diffexp — `make help` lists the targets. Everything runs inside .venv/, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install run test test-all bench prefetch train classifier

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ and install diffexp with its dev extras
	@true

run: $(STAMP) ## Run the default experiment (DPS deblurring of 8 bundled digits); ARGS='key=value ...'
	$(PY) run.py $(ARGS)

test: $(STAMP) ## Run the test suite (skips tests marked slow)
	WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

test-all: $(STAMP) ## Run every test, slow ones included
	WANDB_MODE=offline $(PY) -m pytest -q -m "slow or not slow" $(ARGS)

bench: $(STAMP) ## Benchmarks against diffusers and deepinv; results to benchmarks/results/
	$(PY) -m benchmarks.run $(ARGS)

prefetch: $(STAMP) ## On a machine with internet: download the LPIPS backbone and the hub models named in conf/model/
	$(PY) -m diffexp.prefetch

train: $(STAMP) ## Train the MNIST model: make train DATA=/path/to/mnist [ARGS='steps=...']
	$(PY) -m diffexp.train data.path=$(DATA) $(ARGS)
