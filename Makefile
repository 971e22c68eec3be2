# diffexp — `make help` lists the targets. Everything runs inside .venv/, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install run test test-all bench prefetch train tune table

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

DPS_STEPS ?= 0.3,1,3,10
ALD_STEPS ?= 0.1,0.3,0.7,1.5
TASKS ?= denoise inpaint deblur super_resolution

tune: $(STAMP) ## Step-size sweeps behind the per-task defaults: outputs/tune/<task>-<sampler>/summary.md
	for t in $(TASKS); do \
	  $(PY) run.py -m task=$$t sampler=dps sampler.step_size=$(DPS_STEPS) logger=none hydra.sweep.dir=outputs/tune/$$t-dps || exit 1; \
	  $(PY) run.py -m task=$$t sampler=scoreald sampler.step_size=$(ALD_STEPS) logger=none hydra.sweep.dir=outputs/tune/$$t-scoreald || exit 1; \
	done

table: $(STAMP) ## The README's task × sampler table with the defaults: outputs/table/summary.md
	$(PY) run.py -m task=$(shell echo $(TASKS) | tr ' ' ',') sampler=dps,scoreald logger=none hydra.sweep.dir=outputs/table
	cat outputs/table/summary.md
