# `make test` is what CI runs; it needs nothing but Python 3.11+ on the machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STANDIN_PORT ?= 8001

.PHONY: test lint run standin clean bench bench-quick soak

$(BIN)/.installed: requirements.txt requirements-run.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(BIN)/.run-installed

# `make run` installs only what running needs (requirements-run.txt), not the development tools,
# and says so instead of pip's lines (-qq: errors only).
$(BIN)/.run-installed: requirements.txt requirements-run.txt
	@echo "make run: installing the service's packages into $(VENV)/ (first run only, about 15 s)..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements-run.txt
	@touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(BIN)/pytest

# The stand-in and the service on the embedded PostgreSQL: try the API at http://localhost:8000/docs.
# The stand-in detaches once it listens (or fails with one line, and the service is not started);
# it ends with the service: on Ctrl-C, a closed terminal (SIGHUP), SIGTERM or a failed start.
run: $(BIN)/.run-installed
	@standin=$$($(BIN)/python -m jservice --port $(STANDIN_PORT) --detach) || exit 1; \
	trap 'kill $$standin 2>/dev/null' EXIT; trap 'exit $$?' INT TERM HUP; \
	JSERVICE_URL=$${JSERVICE_URL:-http://127.0.0.1:$(STANDIN_PORT)} $(BIN)/python server.py

standin: $(BIN)/.run-installed
	$(BIN)/python -m jservice --host 0.0.0.0 --port $(STANDIN_PORT)

# Benchmarks (README "Performance"). HTTP load comes from wrk (required) and nginx is the download
# scenario's yardstick: as root, the bench targets install both when wrk is missing.
# `make bench BENCH_ARGS="users questions"` runs only the scenarios named.
WRK_CHECK = command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || \
	(apt-get update -qq && apt-get install -y -qq wrk nginx-light)

bench: $(BIN)/.installed
	@$(WRK_CHECK)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(BIN)/.installed
	@$(WRK_CHECK)
	$(BIN)/python -m bench --quick

# Soak: 120 s of mixed load against one server (`make soak SOAK_ARGS=--quick` for 20 s)
soak: $(BIN)/.installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
