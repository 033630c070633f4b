# Two commands do everything on a fresh machine:
#   make demo   - set up, get Fashion-MNIST, pretrain SimCLR for DEMO_MINUTES of training (8), print the kNN table
#   make test   - set up, run the test suite
#   make lint   - the gates every commit passes: ruff format --check, ruff check, mypy (the versions the constraints pin)
#   make docs   - build the documentation site (offline, warnings are errors) into docs/_build/html
#   make doctest - run the examples in the docstrings, the docs' pages and the README
#   make beit-demo - BEiT's two stages on Fashion-MNIST: train the visual tokenizer, then BEiT on its tokens; kNN table
VENV ?= .venv
PY := $(VENV)/bin/python
RUN := scripts/with_jemalloc.sh
DEMO_CONFIG ?= configs/simclr/fashion_mnist.yaml
DEMO_MINUTES ?= 8
PYTEST_ARGS ?= -n auto --durations=15

.PHONY: demo beit-demo test lint docs doctest install data clean

install:
	@scripts/system_deps.sh
	@scripts/setup_env.sh

data: install
	@$(PY) -m lightning_ssl.data.fetch fashion_mnist --root data
	-@$(PY) -m lightning_ssl.data.fetch shakespeare --root data   # the text corpus of configs/{gpt,bert,t5}; optional for the demo

demo: data
	$(RUN) $(VENV)/bin/lightning-ssl fit --config $(DEMO_CONFIG) --config configs/shared/wandb.yaml --budget.minutes $(DEMO_MINUTES)
	$(RUN) $(PY) -m lightning_ssl.eval.report --config $(DEMO_CONFIG) --ckpt last

beit-demo: data  # BEiT's config names the tokenizer by its output root: the newest tokenizer run is used
	$(RUN) $(VENV)/bin/lightning-ssl fit --config configs/visual_tokenizer/fashion_mnist.yaml
	$(RUN) $(VENV)/bin/lightning-ssl fit --config configs/beit/fashion_mnist.yaml
	$(RUN) $(PY) -m lightning_ssl.eval.report --config configs/beit/fashion_mnist.yaml --ckpt last

test: install
	$(RUN) $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

docs: install
	$(VENV)/bin/sphinx-build -b html -W --keep-going -q docs docs/_build/html
	@echo ">> docs/_build/html/index.html"

doctest: install
	$(PY) -m pytest -p no:xdist -q tests/test_docs.py tests/test_readme.py

clean:
	rm -rf outputs lightning_logs wandb .pytest_cache docs/_build docs/api/_generated docs/tutorials/notebooks
