# `make test` is what CI runs; it needs nothing but Python 3.11+ on the machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STANDIN_PORT ?= 8001

.PHONY: test test-fast lint run standin clean bench bench-quick soak test-docker image-ffmpeg mutation

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

# The quick subset (marker `fast`: the unit tests and the quick API modules), under a minute.
test-fast: $(BIN)/.installed
	$(BIN)/pytest -m "fast and not docker"

# Mutation testing of the parsing, validation and decision modules against their fast tests
# (pyproject.toml [tool.mutmut]; docs/reliability.md): one line per module, fails below 90%.
# Not part of `make test` or CI: about 20 minutes on two cores.
mutation: $(BIN)/.installed
	$(BIN)/python tools/mutation.py $(MUTATION_ARGS)

# docker-compose.yml built, started and exercised on a Docker engine (skips when none answers);
# CI runs it after `make test`. The first build compiles ffmpeg: a few minutes on two cores.
test-docker: $(BIN)/.installed
	$(BIN)/pytest tests/system -m docker

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
	@$(IMAGE_FFMPEG_IF_DOCKER)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(BIN)/.installed
	@$(WRK_CHECK)
	@$(IMAGE_FFMPEG_IF_DOCKER)
	$(BIN)/python -m bench --quick

# The bench measures the ffmpeg the image ships: where a Docker engine answers (and FFMPEG_BINARY is
# unset), the image is built if needed and its ffmpeg (static) copied to $(VENV)/image-ffmpeg.
IMAGE_FFMPEG_IF_DOCKER = if [ -z "$$FFMPEG_BINARY" ] && docker info >/dev/null 2>&1; then \
	$(MAKE) --no-print-directory image-ffmpeg; fi
image-ffmpeg: $(BIN)/.installed
	docker compose build app
	image=$$(docker compose config --format json | $(BIN)/python -c \
		'import json, sys; print(json.load(sys.stdin)["services"]["app"]["image"])') && \
	docker run --rm --network none --entrypoint cat "$$image" /usr/local/bin/ffmpeg > $(VENV)/image-ffmpeg.part
	chmod +x $(VENV)/image-ffmpeg.part && mv $(VENV)/image-ffmpeg.part $(VENV)/image-ffmpeg

# Soak: 120 s of mixed load against one server (`make soak SOAK_ARGS=--quick` for 20 s)
soak: $(BIN)/.installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache mutants
