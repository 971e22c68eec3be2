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

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Benchmarks against diffusers and deepinv (installs the bench extra); results to benchmarks/results/
	$(PY) -m benchmarks.run $(ARGS)

prefetch: $(STAMP) ## On a machine with internet: download the LPIPS backbone and the hub models named in conf/model/
	$(PY) -m diffexp.prefetch

train: $(STAMP) ## Train the MNIST model: make train DATA=/path/to/mnist [ARGS='steps=...']
	$(PY) -m diffexp.train data.path=$(DATA) $(ARGS)

SWEEP := $(PY) run.py -m logger=none

tune: $(STAMP) ## Step-size sweeps behind the per-task defaults: outputs/tune/<task>-<sampler>/summary.md
	-$(SWEEP) task=denoise sampler=dps sampler.step_size=0.3,0.5,1 hydra.sweep.dir=outputs/tune/denoise-dps
	-$(SWEEP) task=denoise sampler=scoreald sampler.step_size=0.3,0.5,0.7 hydra.sweep.dir=outputs/tune/denoise-scoreald
	-$(SWEEP) task=inpaint sampler=dps sampler.step_size=1,2,3,5 hydra.sweep.dir=outputs/tune/inpaint-dps
	-$(SWEEP) task=inpaint sampler=scoreald sampler.step_size=0.3,0.7,1.5 hydra.sweep.dir=outputs/tune/inpaint-scoreald
	-$(SWEEP) task=deblur sampler=dps sampler.step_size=2,3,5 hydra.sweep.dir=outputs/tune/deblur-dps
	-$(SWEEP) task=deblur sampler=scoreald sampler.step_size=1,1.5,2 hydra.sweep.dir=outputs/tune/deblur-scoreald
	-$(SWEEP) task=super_resolution sampler=dps sampler.step_size=2,3,5 hydra.sweep.dir=outputs/tune/super_resolution-dps
	-$(SWEEP) task=super_resolution sampler=scoreald sampler.step_size=6,12,24 hydra.sweep.dir=outputs/tune/super_resolution-scoreald

table: $(STAMP) ## The README's task × sampler table with the defaults: outputs/table/summary.md
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=dps,scoreald hydra.sweep.dir=outputs/table
	$(PY) -m benchmarks.defaults_table outputs/table
