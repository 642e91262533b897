# Two entry points (see README): `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch is pinned for our machines; users may run any torch >= 2.4.
TORCH_PIN ?= torch==2.13.0

$(BIN)/sonosynth: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# constraints.txt holds the pin through every later install: without it a dependency (timm's torchvision)
	# replaced the CPU torch with a multi-GB CUDA build (tests/test_install.py checks the venv's torch).
	$(BIN)/pip install --quiet -c constraints.txt $(TORCH_PIN)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# nnU-Net's network package pulls timm and with it PyPI's torchvision, which cannot load beside the
	# CPU torch file (and then breaks transformers' imports). Nothing here uses them: timm serves only
	# nnU-Net's Primus/EVA architectures. Users with a matching torchvision keep both.
	$(BIN)/pip uninstall --quiet --yes torchvision timm
	touch $@

venv: $(BIN)/sonosynth

demo: venv
	$(BIN)/sonosynth demo --out demo-out

test: venv
	$(BIN)/ruff check sonosynth tests benchmarks
	$(BIN)/pytest -n 2 -q

# The same without the end-to-end tests (marked `slow`): a quick check while editing.
test-fast: venv
	$(BIN)/ruff check sonosynth tests benchmarks
	$(BIN)/pytest -n 2 -q -m "not slow"

# Regenerate docs/cli.md from the CLI (tests/test_docs.py fails when it is stale).
docs: venv
	$(BIN)/python docs/generate_cli_reference.py

.PHONY: venv demo test test-fast docs
