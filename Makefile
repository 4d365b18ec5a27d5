# `make test` is what CI runs; it needs nothing but Python 3.11+ on the machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STANDIN_PORT ?= 8001

.PHONY: test lint run standin clean bench bench-quick soak test-docker

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(BIN)/pytest

# docker-compose.yml built, started and exercised on a Docker engine (skips when none answers);
# CI runs it after `make test`. The first build compiles ffmpeg: a few minutes on two cores.
test-docker: $(BIN)/.installed
	$(BIN)/pytest tests/system -m docker

# The stand-in and the service on the embedded PostgreSQL: try the API at http://localhost:8000.
run: $(BIN)/.installed
	$(BIN)/python -m jservice --port $(STANDIN_PORT) & standin=$$!; \
	trap 'kill $$standin' EXIT INT TERM; \
	JSERVICE_URL=$${JSERVICE_URL:-http://127.0.0.1:$(STANDIN_PORT)} $(BIN)/python server.py

standin: $(BIN)/.installed
	$(BIN)/python -m jservice --host 0.0.0.0 --port $(STANDIN_PORT)

# Benchmarks (README "Performance"); wrk and nginx are used when installed: apt-get install wrk nginx.
# `make bench BENCH_ARGS="users questions"` runs only the scenarios named.
bench: $(BIN)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: $(BIN)/.installed
	$(BIN)/python bench/run.py --quick

# Soak: 120 s of mixed load against one server (`make soak SOAK_ARGS=--quick` for 20 s)
soak: $(BIN)/.installed
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
