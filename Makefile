# One entry point for people and CI. `make serve` and `make test` set up
# everything they need on a fresh machine (a virtualenv in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
BREAKING_AGAINST ?= HEAD~1

.PHONY: serve test bench check lint typecheck proto-lint generate check-generated pytest prometheus clean node-typecheck node-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci
	touch $(NODE_STAMP)

## Serve on 127.0.0.1:50051 with the embedded SQLite store (./imageloc.db).
serve: $(STAMP)
	$(BIN)/imageloc serve

## The benchmark (docs/performance.md); BENCH_ARGS passes options, e.g. BENCH_ARGS=--fast.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## Every check and every test: what CI runs.
test: check node-test pytest

check: lint typecheck proto-lint check-generated node-typecheck

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
generate: $(STAMP) $(NODE_STAMP)
	tools/generate.sh

## Fail when the committed stubs differ from what protos/ generates.
check-generated: $(STAMP) $(NODE_STAMP)
	@tmp=$$(mktemp -d) && \
	tools/generate.sh $$tmp && \
	if diff -r $$tmp/generated generated; then rm -rf $$tmp; \
	else rm -rf $$tmp; echo "generated/ is stale: run 'make generate' and commit"; exit 1; fi

pytest: $(STAMP) prometheus
	$(BIN)/pytest

## The real Prometheus tests/test_metrics.py scrapes the server with (Debian's package).
prometheus:
	@command -v prometheus >/dev/null || { \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

node-typecheck: $(NODE_STAMP)
	npm run typecheck

## The Node client's tests (they start their own server from .venv).
node-test: $(STAMP) $(NODE_STAMP)
	npm test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache node_modules build
