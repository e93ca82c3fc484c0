# One-command entry points. `make test` needs only python3 on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format run bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The server on flows/ (fresh SQLite file) with the local Messenger emulator as its Graph API.
# Then, in another terminal: .venv/bin/flowc say "I'm interested in a demo"   (Ctrl-C stops)
run: $(STAMP)
	bash scripts/run-local.sh

bench: $(STAMP)
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/runtime.py --store
	$(BIN)/python bench/sender.py
	$(BIN)/python bench/webhook.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
