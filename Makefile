# One entry point for people and CI. `make serve` and `make test` set up
# everything they need on a fresh machine (a virtualenv in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BREAKING_AGAINST ?= HEAD~1

.PHONY: serve test check lint typecheck proto-lint generate check-generated pytest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Serve on 127.0.0.1:50051 with the embedded SQLite store (./imageloc.db).
serve: $(STAMP)
	$(BIN)/imageloc serve

## Every check and every test: what CI runs.
test: check pytest

check: lint typecheck proto-lint check-generated

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

proto-lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	@# An incompatible API change must not land silently: compare with the previous commit.
	@if git rev-parse -q --verify "$(BREAKING_AGAINST)^{commit}" >/dev/null; then \
	  echo "buf breaking --against .git#ref=$(BREAKING_AGAINST)"; \
	  $(BIN)/buf breaking --against ".git#ref=$(BREAKING_AGAINST)"; \
	else echo "buf breaking: no $(BREAKING_AGAINST) to compare with, skipped"; fi

## Regenerate every committed stub from protos/.
generate: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/buf generate

## Fail when the committed stubs differ from what protos/ generates.
check-generated: $(STAMP)
	@tmp=$$(mktemp -d) && \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/buf generate -o $$tmp && \
	if diff -r $$tmp/generated generated; then rm -rf $$tmp; \
	else rm -rf $$tmp; echo "generated/ is stale: run 'make generate' and commit"; exit 1; fi

pytest: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
