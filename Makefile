# Stockroom: `make run` serves on SQLite at 127.0.0.1:8000; `make test` runs every check
# (`make test-fast` only the unit tests of pure code: seconds, no database).
# Both create .venv with Python 3.11 and install pinned requirements first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run migrate test test-fast pytest schemathesis lint fmt docs ensure-postgres ensure-pgbouncer ensure-chromium install install-test clean vendor bench-files bench-async bench bench-events bench-console bench-replicas bench-scale

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Stockroom needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps: reinstall only when the pinned requirements or the project metadata change.
$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

# openapi-python-client (tests/test_generated_client.py) pins typer below the CLI's: its own venv.
$(VENV)/generator/.installed: $(BIN)/python requirements-generator.txt
	$(PYTHON) -m venv $(VENV)/generator
	$(VENV)/generator/bin/pip install --quiet -r requirements-generator.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test $(VENV)/generator/.installed

migrate: install
	$(BIN)/stockroom migrate

run: install
	@echo "Stockroom: open http://$(HOST):$(PORT)/ in a browser for the console (API docs at /docs; SQLite file ./stockroom.db; Ctrl-C stops)"
	@echo "Every endpoint but /ping, /healthz, /readyz, /metrics and the docs needs an API key. Make one:"
	@echo "    $(BIN)/stockroom apikey create --name me --scopes admin"
	@echo "and sign in to the console with it, or send it as 'Authorization: Bearer <key>'."
	$(BIN)/stockroom serve --host $(HOST) --port $(PORT)

# The fast tier first: a broken pure function fails in seconds, before any database starts.
test: install-test test-fast ensure-postgres ensure-pgbouncer lint pytest schemathesis

# tests/unit: pure code called directly (no app, database, subprocess or sleep).
test-fast: install-test
	$(BIN)/pytest tests/unit -q

# tests/test_readme.py runs the README's examples: they need bash and curl.
# tests/unit ran in test-fast: not twice. Two test processes at once, then the few tests
# that need PostgreSQL's connections to themselves, alone (tests/conftest.py says why).
# Branch coverage of src/stockroom over both runs, the `stockroom` processes the tests start
# included ([tool.coverage.*] in pyproject.toml): the report and its floor at the end. The
# floor sits just under the totals measured when it was set (95.23% and 95.06% in two runs of
# the same code on 2026-12-07: statements 96.6%, branches 90.3%): 0.5 below, about three times
# that run-to-run spread (branches that depend on timing), so that chance fails no run. Raise
# it when coverage rises; never lower it to let a change in.
COVERAGE_FLOOR := 94.5
pytest: install-test ensure-chromium
	@command -v curl >/dev/null || { apt-get update && apt-get install -y curl; }
	$(BIN)/pytest --ignore=tests/unit -n 2 --dist loadfile -m "not exclusive" \
		--cov=stockroom --cov-branch --cov-report=
	$(BIN)/pytest --ignore=tests/unit -m exclusive \
		--cov=stockroom --cov-branch --cov-append \
		--cov-report=term-missing:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)

schemathesis: install-test
	BIN=$(BIN) scripts/schemathesis.sh

lint: install-test
	$(BIN)/ruff format --check src tests
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

fmt: install-test
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

ensure-postgres:
	scripts/ensure-postgres.sh

# The PgBouncer tests need Debian's pgbouncer package; install it once if it is missing.
ensure-pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
		{ apt-get update && apt-get install -y pgbouncer; }

# The browser tests drive Debian's chromium (through playwright, which downloads nothing).
ensure-chromium:
	@test -x /usr/bin/chromium || { apt-get update && apt-get install -y chromium; }

# The console's vendored JavaScript and CSS (src/stockroom/console/vendor/, VENDOR.md): npm pack
# of the pinned versions in a temporary folder. The only target that needs npm.
vendor:
	scripts/vendor-console.sh

# Regenerates the settings table of docs/operations.md from the settings model.
docs: install
	$(BIN)/python scripts/settings-reference.py

# Import and export 1,000,000 rows on PostgreSQL against psql's COPY (a few minutes).
bench-files: install-test ensure-postgres
	@command -v psql >/dev/null || { apt-get update && apt-get install -y postgresql-client; }
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/files.py --rows $${ROWS:-1000000}

# 50 ms of I/O as async, def and blocking, and a DB query async vs sync, at c=200 (~1 min).
bench-async: install-test ensure-postgres
	@command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/async_bench.py

# Webhook deliveries/s draining a 20,000-event backlog, and commit->delivery latency p50/p99
# at a steady 500 writes/s for 20 s, from `stockroom serve` to a local receiver (~2 min).
bench-events: install-test ensure-postgres
	$(BIN)/python bench/events.py

# The console in Chromium on 100,000 items: the list's and a 10,000-row ledger's chart's load
# times, an API change until an open page shows it, a first visit's bytes (minutes; a quiet
# machine; bench/console.py --smoke, 1,000 items and 3 loads, only checks that it runs).
bench-console: install-test ensure-postgres ensure-chromium
	$(BIN)/python bench/console.py

# Stockroom against a bare Starlette + asyncpg reference, FastAPI's ceiling and the SQLModel
# tutorial pattern on 10,000 items: GET by id, list, adjustments, POST /items, ping, c=1024,
# and Stockroom through PgBouncer; each server on one core (~12 min; BENCH_SMOKE=1: ~4 min).
bench: install-test ensure-postgres ensure-pgbouncer
	@command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
	@command -v psql >/dev/null || { apt-get update && apt-get install -y postgresql-client; }
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/bench.py

# Issue #23's replica scenario on a primary and a hot standby of its own (initdb and
# pg_basebackup in a temporary folder, removed at the end; never the shared cluster): GET by id
# with replicas off, on the replica, and on the replica with a Consistency-Token (CPU per
# request: the replica's within 5% of replicas off), and the standby's visibility lag p50/p99
# with no load and under adjust-random writes (~3 min; bench/replicas.py --smoke: ~1 min).
bench-replicas: install-test
	@command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
	@test -x /usr/lib/postgresql/15/bin/pg_basebackup || { apt-get update && apt-get install -y postgresql-15; }
	$(BIN)/python bench/replicas.py

# Reads as the data grows (issue #25): databases of each size made once and kept
# (stockroom_scale_<size>): 10,000, 1,000,000 and 5,000,000 items (BENCH_SCALE_SIZES to choose).
bench-scale: install-test ensure-postgres
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .hypothesis src/*.egg-info .coverage .coverage.*
