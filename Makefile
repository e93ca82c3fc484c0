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

# Checks the example flows, runs their transcripts, and plays the lead-generation conversation.
# (The Messenger server and its local emulator join this target with the server issue.)
run: $(STAMP)
	$(BIN)/flowc check flows/
	$(BIN)/flowc test flows/
	printf 'I am interested in pricing\nAda\nada@example.com\n' | $(BIN)/flowc chat flows/ --json

bench: $(STAMP)
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/runtime.py --store

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
