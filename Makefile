# make demo / make test set up .venv on first use, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-flowctl

.PHONY: demo test bench soak lint clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flowctl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/flowctl bench e2e --flows 2000000

# Bounded soak of the long-running stack: prints one JSON stats line per 15 s and a summary
# (memory and lag at the start and end). SOAK_DURATION=30m for a longer run.
SOAK_DURATION ?= 5m
soak: $(STAMP)
	$(BIN)/flowctl --state-dir .flowctl/soak --lake .flowctl/soak/lake up --no-view --duration $(SOAK_DURATION) \
		--rate 5000 --stats-every 15 --detect-interval "" --recommend-interval ""

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests

clean:
	rm -rf $(VENV) .flowctl lake .pytest_cache
