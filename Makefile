# Every target creates and uses .venv itself; only Python 3.11+ and make are needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml plugins/*/pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: install demo test check coverage lint proto proto-check proto-lint clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet $(foreach p,$(wildcard plugins/*),-e $(p))
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/python -m campaignd.demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: ruff and every test not marked slow (a few seconds or more), stopping at the first failure.
check: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -x -q $(PYTEST_ARGS)

# The whole suite with branch coverage, the daemon processes it starts included; CI runs this.
coverage: install
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	for tests in plugins/*/tests; do $(BIN)/mypy $$tests || exit 1; done

proto: install
	$(BIN)/python proto/generate.py

# Regenerating the committed code must change nothing.
proto-check: proto
	git diff --exit-code -- src/campaignd/v1 || (echo "generated code is stale: run 'make proto' and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- src/campaignd/v1)" || (echo "untracked generated files: run 'make proto' and commit" >&2; exit 1)

# buf lint (Google AIP style, exceptions in proto/buf.yaml) and buf breaking against the protos
# before their newest change, so no change silently breaks a client in another language.
proto-lint: install proto/node_modules/.package-lock.json
	$(BIN)/python proto/buf.py

proto/node_modules/.package-lock.json: proto/package-lock.json
	npm ci --prefix proto --no-audit --no-fund --silent

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo .coverage .coverage.* proto/node_modules
