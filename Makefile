# The two commands in the README: `make serve` and `make test`. Both create the virtual
# environment on first use (and refresh it when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: serve test lint bench-transfer bench-speed bench-cpu clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

serve: $(BIN)/.installed
	$(BIN)/transferlab serve

test: $(BIN)/.installed
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports

bench-transfer: $(BIN)/.installed
	$(BIN)/python bench/transfer_digits.py

bench-speed: $(BIN)/.installed
	$(BIN)/python bench/speed.py

bench-cpu: $(BIN)/.installed
	$(BIN)/python bench/cpu_settings.py

clean:
	rm -rf $(VENV) data .pytest_cache
