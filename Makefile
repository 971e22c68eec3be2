# diffexp — `make help` lists the targets. Everything runs inside .venv/, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install run test test-all bench prefetch train train-classifier tune table

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

# TORCH=cpu (make install TORCH=cpu, on a fresh clone): torch/torchvision CPU wheels from the PyTorch index
# (about 1 GB less than PyPI's CUDA build on Linux) when that index is reachable; else PyPI's, with a note.
TORCH ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "make: needs python3 (>= 3.10) with its venv module (Debian/Ubuntu: apt install python3-venv)"; exit 1; }
	$(PY) -m pip install --upgrade pip
	@index=""; if [ "$(TORCH)" = cpu ]; then \
	  if $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=10)" 2>/dev/null; then \
	    index="--extra-index-url $(TORCH_CPU_INDEX)"; \
	  else echo "make install: $(TORCH_CPU_INDEX) is not reachable; torch comes from PyPI (CUDA build on Linux)"; fi; \
	elif [ -n "$(TORCH)" ]; then echo "make install: TORCH=$(TORCH) is unknown; allowed: cpu (or leave it unset)"; exit 1; fi; \
	echo "$(PY) -m pip install -e '.[dev]' $$index"; $(PY) -m pip install -e '.[dev]' $$index
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ and install diffexp with its dev extras (TORCH=cpu: CPU-only torch, no CUDA)
	@true

run: $(STAMP) ## Run the default experiment (DPS deblurring of 8 bundled digits); ARGS='key=value ...'
	$(PY) run.py $(ARGS)

test: $(STAMP) ## Run the test suite (skips tests marked slow)
	WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

RAY_STAMP := $(VENV)/.ray-stamp

$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[dev,ray]'
	touch $(RAY_STAMP)

test-all: $(RAY_STAMP) ## Run every test, slow ones included (installs the ray extra for the Ray launcher test)
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
	$(PY) -m diffexp.training.ddpm data.path=$(DATA) $(ARGS)

train-classifier: $(STAMP) ## Train the MNIST classifier of the mnist FID/KID features: make train-classifier DATA=/path/to/mnist
	$(PY) -m diffexp.training.classifier data.path=$(DATA) $(ARGS)

SWEEP := $(PY) run.py -m logger=none overwrite=true  # tune/table regenerate their fixed sweep dirs
POSTERIOR = $$($(PY) -m diffexp.samplers --posterior)  # every posterior sampler of conf/sampler/

tune: $(STAMP) ## Step-size sweeps behind the per-task defaults: outputs/tune/<task>-<sampler>/summary.md
	-$(SWEEP) task=denoise sampler=dps sampler.step_size=0.3,0.5,1 hydra.sweep.dir=outputs/tune/denoise-dps
	-$(SWEEP) task=inpaint sampler=dps sampler.step_size=1,2,3,5 hydra.sweep.dir=outputs/tune/inpaint-dps
	-$(SWEEP) task=deblur sampler=dps sampler.step_size=2,3,5 hydra.sweep.dir=outputs/tune/deblur-dps
	-$(SWEEP) task=super_resolution sampler=dps sampler.step_size=2,3,5 hydra.sweep.dir=outputs/tune/super_resolution-dps
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=$(POSTERIOR) sampler.num_steps=50 hydra.sweep.dir=outputs/tune/new-50
	-$(SWEEP) task=inpaint,super_resolution sampler=scoreald sampler.corrector_steps=0 sampler.step_size=1,2,4,8,16 sampler.num_steps=200,1000 hydra.sweep.dir=outputs/tune/scoreald-eta
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=scoreald sampler.step_size=1,4 sampler.corrector_steps=1,3 sampler.corrector_size=0.5,1 hydra.sweep.dir=outputs/tune/scoreald-corrector
	-$(SWEEP) task=deblur,super_resolution sampler=pigdm sampler.step_size=1,2 hydra.sweep.dir=outputs/tune/pigdm-w
	-$(SWEEP) task=inpaint,super_resolution,deblur sampler=diffpir sampler.lam=4,28,200 sampler.zeta=0.3,1 hydra.sweep.dir=outputs/tune/diffpir-lam-zeta
	-$(SWEEP) task=deblur sampler=ddnm sampler.eta=0.85,1 sampler.num_steps=50,100 hydra.sweep.dir=outputs/tune/ddnm-deblur
	-$(SWEEP) task=denoise,inpaint sampler=ddnm sampler.eta=0.85,1 hydra.sweep.dir=outputs/tune/ddnm-svd-eta
	-$(SWEEP) task=inpaint sampler=ddnm num_images=32 sampler.travel_length=1,10 sampler.travel_repeat=1,2,3 hydra.sweep.dir=outputs/tune/ddnm-travel
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=reddiff sampler.lam=0.05,0.25,1,4 sampler.lr=0.05,0.1,0.5 hydra.sweep.dir=outputs/tune/reddiff
	-$(SWEEP) task=inpaint,deblur,super_resolution sampler=reddiff sampler.lam=0.003,0.01,0.05 sampler.lr=0.5,1 hydra.sweep.dir=outputs/tune/reddiff-small-lam
	-$(SWEEP) task=inpaint,deblur,super_resolution sampler=reddiff sampler.num_steps=50,100,200 hydra.sweep.dir=outputs/tune/reddiff-steps
	-$(SWEEP) task=inpaint,deblur,super_resolution sampler=reddiff sampler.lam=0.05,0.25 data.offset=8 hydra.sweep.dir=outputs/tune/reddiff-lam-units
	-$(SWEEP) task=denoise sampler=reddiff sampler.lam=2,4,8,16,64 sampler.num_steps=50,100,200 hydra.sweep.dir=outputs/tune/reddiff-denoise
	-$(SWEEP) task=inpaint,deblur sampler=daps_exact sampler.num_steps=50,100 sampler.ode_steps=1,2 hydra.sweep.dir=outputs/tune/daps-levels
	-$(SWEEP) task=denoise sampler=daps sampler.tau=0.2,0.566 sampler.lr=1e-4,1e-3,5e-3 hydra.sweep.dir=outputs/tune/denoise-daps
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=scoreald sampler.num_steps=200,1000 hydra.sweep.dir=outputs/tune/scoreald-steps
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=$(POSTERIOR) data.offset=8 hydra.sweep.dir=outputs/tune/unseen
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=ddnm,pigdm data.offset=8 hydra.sweep.dir=outputs/tune/unseen-ddnm-pigdm
	-$(SWEEP) task=deblur,super_resolution sampler=ald sampler.likelihood=paper,propagated hydra.sweep.dir=outputs/tune/ald-likelihood
	-$(SWEEP) task=inpaint,deblur,super_resolution sampler=diffpir sampler.lam=7 sampler.zeta=0.8 hydra.sweep.dir=outputs/tune/diffpir-calibrated
	-$(SWEEP) task=deblur,super_resolution sampler=ddnm data.offset=8 sampler.budget=svd,smooth hydra.sweep.dir=outputs/tune/unseen-ddnm-budget
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=daps,ald data.offset=8 hydra.sweep.dir=outputs/tune/unseen-new

# make table K=4: 4 posterior samples per measurement (posterior-mean metrics, coverage, paired CIs), 8 images a batch
K ?= 1
TABLE_DIR = outputs/table$(if $(filter-out 1,$(K)),-k$(K))
TABLE_K = $(if $(filter-out 1,$(K)),num_samples=$(K) batch_size=$(shell echo $$(( 8 * $(K) ))))

table: $(STAMP) ## The README's task × sampler table with the defaults: outputs/table/summary.md (K=4: outputs/table-k4/)
	-$(SWEEP) task=denoise,inpaint,deblur,super_resolution sampler=$(POSTERIOR) $(TABLE_K) hydra.sweep.dir=$(TABLE_DIR)
	$(PY) -m benchmarks.defaults_table $(TABLE_DIR)
