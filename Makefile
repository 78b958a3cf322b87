# autorule developer commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch for laptops and CI; on a GPU cluster set TORCH_SPEC to the build you need.
TORCH_SPEC ?= torch==2.13.0
# Index that serves TORCH_SPEC, when not the one pip is configured with. Linux wheels of torch on
# PyPI bundle CUDA (gigabytes); for the CPU build there, use
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# OpenRLHF release whose remote reward client the tests call (the AutoRule scripts' era), installed
# without its dependencies (they pin CUDA builds and older transformers); the Ray job of
# grpo.engine=openrlhf installs its own.
OPENRLHF_SPEC ?= openrlhf==0.6.4
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROOT ?= outputs
# Extra overrides for `make demo`, e.g. ARGS="generate.max_prompts=8"
ARGS ?=

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: install test test-all demo lint format bench gpu-check data clean

install: $(STAMP)

# Re-installs only when the package metadata changes, so a second `make install` is instant.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(OPENRLHF_SPEC)" || echo "note: $(OPENRLHF_SPEC) has wheels \
	for Python 3.10 and 3.11 only; the test against OpenRLHF's own reward client will skip"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not bench and not gpu" tests

test-all: install
	$(PY) -m pytest -q tests

# Every stage on the tiny profile, then the path of the run's Markdown report.
demo: install
	$(PY) -m autorule stage=pipeline paths.root=$(ROOT) $(ARGS)
	@$(PY) -m autorule.stages.report paths.root=$(ROOT) $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: install
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

bench: install
	$(PY) -m pytest -q -m bench -s tests/benchmarks

# One command for a GPU machine (bf16, ZeRO-2/3 through accelerate, vLLM, judge, MFU): a table and
# gpu_check.json; without a GPU it says so and exits 0.
gpu-check: install
	PYTHON=$(PY) bash scripts/gpu_check.sh

# Regenerates the bundled synthetic data under data/ (deterministic; the result is committed).
data: install
	$(PY) scripts/make_tiny_data.py --out data

clean:
	rm -rf $(ROOT) .cache
