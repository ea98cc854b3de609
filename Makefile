# walletd — the two commands a fresh clone needs: `make run` and `make test`.
# Only Python and make are assumed: uv is bootstrapped into .tools/ when it is not on PATH.

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
PYTEST_ARGS ?=

.PHONY: setup run test test-fast lint format bench chaos clean

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(BIN)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python "$$(command -v $(PYTHON))"
	@touch $@

setup: $(BIN)/.synced

run: setup
	$(BIN)/walletd dev

# Exit code 5 (no test collected) is a failure, never a silent pass.
test: setup
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: setup
	@$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench.run

chaos: setup
	$(BIN)/python -m tests.chaos.run

clean:
	rm -rf .walletd $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
