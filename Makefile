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
.PHONY: all help install test smoke demo bench accuracy docs-figures memory compare-mnist sweep-synthetic study-quick study study-adam-family study-fashion download-mnist paths tensorboard clean $(CONFIGS)

all: $(CONFIGS) ## run every shipped config (the published runs) into runs/

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-28s %s\n", $$1, $$2}'
	@echo "  one target per config:"
	@for c in $(CONFIGS); do printf "    %-26s gdtrain run configs/%s.yaml\n" $$c $$c; done

install: $(VENV)/.installed ## create .venv and install gdtrain with its test (pytest, ruff), plot and optimizers extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,plot,optimizers]"
	touch $@

test: install ## lint and format check (ruff), then the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

smoke: install ## a few seconds end to end (the config the tests and CI use)
	$(RUN) configs/smoke.yaml

demo: install ## train the default experiment (synthetic two moons, no download)
	$(RUN) configs/synthetic_moons_mlp.yaml

bench: install ## seconds per epoch of the MNIST MLP: gdtrain vs hand-written loops vs the matmul floor; N runs stacked
	$(BIN)/gdtrain bench --load

accuracy: install ## test accuracy of mnist_sgd and mnist_adam on MNIST and Fashion-MNIST, 3 seeds (~10 min)
	$(BIN)/python benchmarks/accuracy.py --data-root "$(GDTRAIN_DATA)"

docs-figures: install ## the README's shipped-configs table: every config's result and wall time, with the machine (~3 min)
	$(BIN)/python benchmarks/docs_figures.py --write README.md

memory: install ## the memory check's estimate against the measured peak RSS of real runs (~6 CPU-min)
	$(BIN)/python benchmarks/memory.py --data-root "$(GDTRAIN_DATA)"

compare-mnist: install ## the MNIST MLP with all 7 optimizers into runs/mnist_mlp/, then the table and plot
	@for c in $(MNIST_MLP); do $(RUN) configs/$$c.yaml --quiet --skip-finished || exit 1; done
	$(BIN)/gdtrain compare runs/mnist_mlp --target 0.97 --plot runs/mnist_mlp/compare.png

sweep-synthetic: install ## 7 optimizers x 3 seeds on two moons (~45 s), then the table and plot
	$(BIN)/gdtrain sweep sweeps/synthetic_optimizers.yaml --resume
	$(BIN)/gdtrain compare runs/synthetic_optimizers --target 0.95 --plot runs/synthetic_optimizers/compare.png

study-quick: install ## which optimizer is better: 4 optimizers tuned and rerun on a synthetic set (~10 s), verdict + report
	$(BIN)/gdtrain study studies/quick.yaml --resume

study: install ## the MNIST study: 7 optimizers, equal tuning budget, 4 repeats of 5 seeds each, verdict + report (docs/studies.md gives its time)
	$(BIN)/gdtrain study studies/mnist_optimizers.yaml --resume

study-adam-family: install ## adam, adamw, nadam, radam, adamax, Lion, Schedule-Free AdamW and Muon on MNIST: verdict + report
	$(BIN)/gdtrain study studies/mnist_adam_family.yaml --resume

study-fashion: install ## the same study on Fashion-MNIST
	$(BIN)/gdtrain study studies/fashion_mnist_optimizers.yaml --resume

download-mnist: install ## fetch MNIST into GDTRAIN_DATA (md5-checked; a no-op when the files are there)
	$(BIN)/gdtrain data download mnist

paths: install ## the tutorials' pictures: every optimizer's path on x², x² + 10y² and Rosenbrock (PNG + TensorBoard)
	$(BIN)/gdtrain paths configs/path_quadratic_sgd.yaml --optimizers sgd,momentum,nesterov,adagrad,rmsprop,adam,adamw
	$(BIN)/gdtrain paths configs/path_ill_conditioned_sgd.yaml --optimizers sgd,momentum:0.02,nesterov:0.02,adagrad:1,rmsprop:0.3,adam:0.5,adamw:0.5
	$(BIN)/gdtrain paths configs/path_rosenbrock_adam.yaml --optimizers sgd:0.002,momentum:0.001,nesterov:0.001,adagrad:0.1,rmsprop:0.01,adam,adamw

tensorboard: install ## serve runs/ on http://localhost:6006 (EXP=<experiment>: that folder alone; a study's: its board/)
	$(BIN)/tensorboard --logdir $(if $(wildcard runs/$(EXP)/board),runs/$(EXP)/board,runs/$(EXP))

clean: ## remove caches and build files (never runs/ or .venv)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

$(CONFIGS): install
	$(RUN) configs/$@.yaml
