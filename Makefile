# Two commands matter: `make run` (the service) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp

.PHONY: install haproxy run test lint format clean bench bench-fanout seed load

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# HAProxy, the edge (deploy/haproxy.cfg) the suite runs: Debian's package, installed if missing.
haproxy:
	@command -v haproxy >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q haproxy >/dev/null; } \
	  || { echo "make test needs HAProxy 2.2 or later: apt-get install haproxy" >&2; exit 1; }

## Set up and run the service (API, relay, workers) in the foreground; Ctrl-C stops it.
run: install
	$(PY) -m feed.launcher

## Set up and run the whole test suite against the machine's PostgreSQL, Redis and RabbitMQ.
test: install haproxy
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

## Benchmarks against same-run baselines (seeds first if needed): table, latest.json, plot.
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

## Fan-out benchmark: one post to 1k/10k/100k followers vs raw pipelined ZADD (same run).
bench-fanout: install
	$(PY) -m bench.fanout

## Seed data for load tests: 100k accounts, power-law follows, 1M posts, votes (sizes: SEED_ARGS).
seed: install
	$(PY) -m bench.seed $(SEED_ARGS)

## Load test a running service (LOAD_HOST, LOAD_USERS, LOAD_TIME, LOAD_CLASS); CSV + HTML in bench/results/.
LOAD_HOST ?= http://127.0.0.1:8000
LOAD_USERS ?= 50
LOAD_TIME ?= 60s
LOAD_CLASS ?= FeedUser
load: install
	mkdir -p bench/results
	$(VENV)/bin/locust -f bench/locustfile.py --headless -u $(LOAD_USERS) -r $(LOAD_USERS) \
		-t $(LOAD_TIME) --host $(LOAD_HOST) --csv bench/results/load \
		--html bench/results/load.html --only-summary $(LOAD_CLASS)
