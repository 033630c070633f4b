# Two commands do everything on a fresh machine:
#   make demo   - set up, get Fashion-MNIST, pretrain SimCLR (~12 min on 2 CPU cores with set-up), print the kNN table
#   make test   - set up, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
RUN := scripts/with_jemalloc.sh
DEMO_CONFIG ?= configs/simclr/fashion_mnist.yaml
DEMO_CKPT ?= outputs/simclr_fashion_mnist/checkpoints/last.ckpt
PYTEST_ARGS ?=

.PHONY: demo test install data clean

install:
	@scripts/system_deps.sh
	@scripts/setup_env.sh

data: install
	@$(PY) -m lightning_ssl.data.fetch fashion_mnist --root data
	-@$(PY) -m lightning_ssl.data.fetch shakespeare --root data   # the text corpus of configs/{gpt,bert,t5}; optional for the demo

demo: data
	rm -f $(DEMO_CKPT)
	$(RUN) $(VENV)/bin/lightning-ssl fit --config $(DEMO_CONFIG) --config configs/shared/wandb.yaml
	$(RUN) $(PY) -m lightning_ssl.eval.report --config $(DEMO_CONFIG) --ckpt $(DEMO_CKPT)

test: install
	$(RUN) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf outputs lightning_logs wandb .pytest_cache
