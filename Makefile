# Two commands matter: `make run` (the service) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install run test lint format clean bench-fanout

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Set up and run the service (API, relay, workers) in the foreground; Ctrl-C stops it.
run: install
	$(PY) -m feed.launcher

## Set up and run the whole test suite against the machine's PostgreSQL, Redis and RabbitMQ.
test: install
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache

## Fan-out benchmark: one post to 1k/10k/100k followers vs raw pipelined ZADD (same run).
bench-fanout: install
	$(PY) -m bench.fanout
