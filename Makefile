# Two commands on a fresh machine: `make demo` and `make test`.
# The virtualenv is created and filled here; nothing needs installing by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install check test lint browser demo bench soak clean deploy-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check stream tests
	$(BIN)/ruff format --check stream tests

# headless Chromium for the dashboard's browser test (Debian package; apt needs root)
browser:
	command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }

test: lint browser
	$(BIN)/python -m pytest -q

# the fast loop while coding: nothing that needs the broker (tests/conftest.py marks it)
# and nothing marked slow (the CLI, worker processes, full evals); `make test` runs all
check: lint
	$(BIN)/python -m pytest -q -m "not broker and not slow"

# deploy/ only: validators (compose-spec, Kubernetes schemas), wheel install, compose rehearsal
deploy-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/deploy tests/integration/test_deploy.py

demo: $(STAMP)
	$(BIN)/clusterstream demo

# every benchmark at full size (about 25 minutes on 2 cores); rewrites BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m stream.bench.report

# one worker for 30 minutes at a steady rate, ~5M distinct users arriving (not in `make test`;
# its smoke size is); SOAK_ARGS adds options, e.g. SOAK_ARGS="--ttl-s 600"
soak: $(STAMP)
	$(BIN)/python -m stream.bench.soak --minutes 30 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
