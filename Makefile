# The two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
JS := tests/js/node_modules/.installed

.PHONY: run test test-unit bench lint venv js clean clean-services

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

js: $(JS)
$(JS): tests/js/package.json
	command -v npm >/dev/null || { echo "npm is needed for the centrifuge-js tests (apt-get install nodejs npm)"; exit 1; }
	cd tests/js && npm install --no-audit --no-fund --loglevel=error
	touch $@

run: venv
	$(BIN)/livegate serve --config config.toml

test: venv js
	eval "$$(PYTHON=$(BIN)/python scripts/services.sh)" && $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

bench: venv
	eval "$$(PYTHON=$(BIN)/python scripts/services.sh)" && $(BIN)/python -m bench $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check livegate tests bench

clean-services:
	-test -f .tmp/redis.pid && kill $$(cat .tmp/redis.pid)
	-test -f .tmp/redis2.pid && kill $$(cat .tmp/redis2.pid); rm -f .tmp/redis2.port
	-for b in /usr/lib/postgresql/*/bin; do test -d .tmp/pgdata && runuser -u postgres -- $$b/pg_ctl -D .tmp/pgdata stop 2>/dev/null; done; true

clean: clean-services
	rm -rf $(VENV) tests/js/node_modules .tmp .pytest_cache
