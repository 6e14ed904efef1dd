# make demo / make test set up .venv on first use, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-flowctl

.PHONY: demo test bench lint clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flowctl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/flowctl bench e2e --flows 2000000

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests

clean:
	rm -rf $(VENV) .flowctl lake .pytest_cache
