# coi-tui: two commands for a fresh machine.
#   make run   set everything up and open the dashboard on the current directory
#   make test  set everything up and run all tests
# Both are idempotent; `make setup` is the shared part.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Root runs the privileged steps itself; a user runs them through sudo (one password prompt:
# sudo remembers it for the rest of the setup). Without sudo, `coi setup` and `coi build`
# run as the user and skip, with one line each, what only root can do.
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && echo sudo; })
WORKSPACE ?= $(CURDIR)

.PHONY: setup os-deps daemon venv bytecode incus-setup image run test lint bench clean-test

setup: os-deps daemon venv bytecode incus-setup image

os-deps:
	@bash scripts/install-os-deps.sh

daemon:
	@bash scripts/start-incus.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# Every `coi` call imports the package; precompiled bytecode saves ~80 ms per call, and
# matters when PYTHONDONTWRITEBYTECODE is set (Python then never caches it by itself).
bytecode: venv
	@$(BIN)/python -m compileall -q coi_tui

incus-setup: venv daemon
	@$(SUDO) $(BIN)/coi setup

# Builds coi-default only when it is missing or its recipe changed (seconds otherwise).
image: incus-setup
	@$(SUDO) $(BIN)/coi build

run: setup
	@$(BIN)/coi-tui -w "$(WORKSPACE)"

# Every test; the UI tests run beside the others at low priority (scripts/run_tests.sh).
# PYTEST_ARGS picks tests instead (one pytest, as given).
test: setup
ifeq ($(strip $(PYTEST_ARGS)),)
	@scripts/run_tests.sh $(BIN)
else
	@$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)
endif

# Prints the benchmark table and writes bench/results/latest.json (bench/README.md explains it).
bench: setup
	@$(BIN)/python -m bench.run $(BENCH)

# Style, the layer contracts (.importlinter), types (pyright, basic mode) and no import circle
# at all (scripts/import_graph.py counts function-local imports too; exits 1 on a circle).
lint: venv
	@$(BIN)/ruff check coi_tui tests
	@$(BIN)/ruff format --check coi_tui tests
	@$(BIN)/lint-imports
	@$(BIN)/pyright
	@$(BIN)/python scripts/import_graph.py

# Removes leftovers of interrupted test runs (containers named coitest-*).
clean-test: venv
	@$(BIN)/python -m tests.cleanup
