# gdtrain: `make` reproduces every shipped run; `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned: the CPU wheel on this machine, so no CUDA download follows.
TORCH  := torch==2.13.0
RUN    := $(BIN)/gdtrain run
CONFIGS := $(filter-out smoke,$(sort $(basename $(notdir $(wildcard configs/*.yaml)))))
MNIST_MLP := mnist_adam $(sort $(basename $(notdir $(wildcard configs/mnist_mlp_*.yaml))))
# MNIST-family files: ../shared/data when it is beside the checkout, else ./data (see README).
export GDTRAIN_DATA ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data),$(CURDIR)/data)

.DEFAULT_GOAL := all
.PHONY: all help install test smoke demo bench accuracy compare-mnist download-mnist tensorboard clean $(CONFIGS)

all: $(CONFIGS) ## run every shipped config (the published runs) into runs/

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-28s %s\n", $$1, $$2}'
	@echo "  one target per config:"
	@for c in $(CONFIGS); do printf "    %-26s gdtrain run configs/%s.yaml\n" $$c $$c; done

install: $(VENV)/.installed ## create .venv and install gdtrain with its test extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

test: install ## run the test suite
	$(BIN)/python -m pytest -q

smoke: install ## a few seconds end to end (the config the tests and CI use)
	$(RUN) configs/smoke.yaml

demo: install ## train the default experiment (synthetic two moons, no download)
	$(RUN) configs/synthetic_moons_mlp.yaml

bench: install ## seconds per epoch of the MNIST MLP: gdtrain vs hand-written loops vs the matmul floor
	$(BIN)/gdtrain bench

accuracy: install ## test accuracy of mnist_sgd and mnist_adam on MNIST and Fashion-MNIST, 3 seeds (~10 min)
	$(BIN)/python benchmarks/accuracy.py --data-root "$(GDTRAIN_DATA)"

compare-mnist: install ## the MNIST MLP with every optimizer, into runs/mnist_mlp/ (then: make tensorboard)
	@for c in $(MNIST_MLP); do $(RUN) configs/$$c.yaml --quiet || exit 1; done

download-mnist: install ## fetch MNIST into GDTRAIN_DATA (md5-checked; a no-op when the files are there)
	$(BIN)/gdtrain data download mnist

tensorboard: install ## serve runs/ on http://localhost:6006
	$(BIN)/tensorboard --logdir runs

clean: ## remove caches and build files (never runs/ or .venv)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

$(CONFIGS): install
	$(RUN) configs/$@.yaml
