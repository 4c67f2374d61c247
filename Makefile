# The two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
JS := tests/js/node_modules/.installed
WEB := web/node_modules/.installed

.PHONY: run test test-unit test-browser compat compat-js fuzz bench lint proto docs venv js web browser clean clean-services

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

# The demo page's centrifuge-js browser bundle (web/node_modules, pinned in web/package-lock.json).
# Without npm (or offline) this warns and `make run` still serves: the page then says the bundle is missing.
web: $(WEB)
$(WEB): web/package.json web/package-lock.json
	@if ! command -v npm >/dev/null; then \
	  echo "make web: npm not found: the demo page will say that its centrifuge-js bundle is missing (apt-get install nodejs npm)" >&2; \
	elif (cd web && npm ci --no-audit --no-fund --loglevel=error); then touch $@; \
	else echo "make web: npm ci failed: the demo page will say that its centrifuge-js bundle is missing" >&2; fi

# Chromium for the browser tests: Debian's package (installed with apt-get as root), never Playwright's download.
browser:
	@scripts/browser.sh >/dev/null

run: venv web
	$(BIN)/livegate serve --config config.toml

# The suite under coverage (the `livegate serve` processes it starts included); fails when a test
# fails or when line coverage is under the floor (fail_under in pyproject.toml); prints the total.
test: venv js web
	@eval "$$(PYTHON=$(BIN)/python scripts/services.sh)" && eval "$$(scripts/browser.sh)" && eval "$$(scripts/promtool.sh)" && rm -rf .tmp/coverage && mkdir -p .tmp/coverage && \
	$(BIN)/python -m coverage run -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	$(BIN)/python -m coverage combine -q; \
	$(BIN)/python -m coverage report > .tmp/coverage/report.txt; floor=$$?; \
	echo "line coverage: $$($(BIN)/python -m coverage report --format=total --fail-under=0)% (per file: .tmp/coverage/report.txt)"; \
	[ $$rc -eq 0 ] || exit $$rc; \
	[ $$floor -eq 0 ] || { echo "line coverage is under the floor (fail_under in pyproject.toml)"; exit 1; }

# Property-based fuzzing with many more examples than `make test` runs: the JSON codec and the
# handlers through the session core (100,000 frames), the same with the Protobuf codec (30,000
# frames), and the Redis function door against the HTTP API's JSON parser (10,000 payloads).
fuzz: venv
	eval "$$(PYTHON=$(BIN)/python scripts/services.sh)" && \
	LIVEGATE_FUZZ_EXAMPLES=100000 $(BIN)/python -m pytest -q --timeout=0 tests/unit/test_fuzz_session.py --hypothesis-show-statistics && \
	LIVEGATE_FUZZ_EXAMPLES=30000 $(BIN)/python -m pytest -q --timeout=0 tests/unit/test_fuzz_protobuf.py && \
	LIVEGATE_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q --timeout=0 tests/integration/test_fuzz_redis_door.py

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

# The browser tests alone (headless Debian Chromium through Playwright; they fail if it cannot start).
test-browser: venv js web
	eval "$$(scripts/browser.sh)" && $(BIN)/python -m pytest -q tests/browser $(PYTEST_ARGS)

# Centrifugo v6 compatibility, measured by centrifuge-python's own test suite, unchanged: its sdist
# (the version pinned in pyproject.toml, from PyPI) against `livegate serve` on 127.0.0.1:8000 with
# compat/centrifuge-python.toml. Not part of `make test` (a download, then about a minute).
# Prints the totals and each failing test with a reason; COMPAT_ARGS='-- -k TestPubSub' selects.
compat: venv
	$(BIN)/python scripts/compat.py $(COMPAT_ARGS)

# centrifuge-js's Jest suite (not on npm: needs a checkout) against livegate on :8000.
compat-js: venv
	scripts/compat-js.sh

bench: venv
	eval "$$(PYTHON=$(BIN)/python scripts/services.sh)" && $(BIN)/python -m bench $(BENCH_ARGS)

# Regenerate livegate/protocol/proto/client_pb2.py(i) from client.proto (committed; a test fails when stale).
proto: venv
	$(BIN)/python scripts/gen_proto.py

# The documentation site: regenerate the reference pages (config keys, server API) from the code,
# then build docs/ into site/; --strict fails on any warning (a broken link or anchor).
docs: venv
	$(BIN)/python scripts/gen_docs.py
	$(BIN)/mkdocs build --strict

lint: venv
	$(BIN)/ruff check livegate tests bench scripts
	$(BIN)/mypy livegate

clean-services:
	-for r in redis redis2; do test -f .tmp/$$r.pid && kill $$(cat .tmp/$$r.pid); rm -f .tmp/$$r.port; done; true
	-for b in /usr/lib/postgresql/*/bin; do test -d .tmp/pgdata && runuser -u postgres -- $$b/pg_ctl -D .tmp/pgdata stop 2>/dev/null; done; true

clean: clean-services
	rm -rf $(VENV) tests/js/node_modules web/node_modules .tmp .pytest_cache
