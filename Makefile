# livetrack: `make demo` runs the pipeline, `make test` runs the tests. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
VENDOR := gateway/static/vendor

.PHONY: install browser postgres demo test typecheck bench bench-e2e bench-worker bench-faust bench-broker bench-producers bench-dispatch bench-push bench-features bench-orders bench-replay bench-notifications clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENDOR)/.installed: gateway/package.json gateway/package-lock.json
	cd gateway && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)/images
	cp gateway/node_modules/leaflet/dist/leaflet.js gateway/node_modules/leaflet/dist/leaflet.css $(VENDOR)/
	cp gateway/node_modules/leaflet/dist/images/* $(VENDOR)/images/
	cp gateway/node_modules/socket.io-client/dist/socket.io.min.js $(VENDOR)/
	touch $@

install: $(VENV)/.installed $(VENDOR)/.installed
	$(BIN)/livetrack broker fetch >/dev/null
	$(BIN)/livetrack connect fetch >/dev/null

# The page test drives Debian's Chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The legacy bridge's tests run Debian's PostgreSQL 15 (binaries in /usr/lib/postgresql/15/bin).
postgres:
	@test -x /usr/lib/postgresql/15/bin/postgres || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }

demo: install postgres
	$(BIN)/livetrack demo

# Static checks: mypy (strict, setup.cfg [mypy]) and the layer contract (setup.cfg [importlinter]).
typecheck: install
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install browser postgres typecheck
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION))

bench-e2e: install
	$(BIN)/python -m bench.e2e $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION))

bench-worker: install
	$(BIN)/python -m bench.worker_throughput

bench-dispatch: install
	$(BIN)/python -m bench.dispatch $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(if $(WARMUP),--warmup $(WARMUP)) $(if $(BURST),--burst $(BURST))

bench-push: install
	$(BIN)/python -m bench.push $(if $(CLIENTS),--clients $(CLIENTS)) $(if $(DURATION),--duration $(DURATION))

bench-orders: install postgres
	$(BIN)/python -m bench.orders $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(if $(MIGRATED),--migrated $(MIGRATED))

bench-faust: install
	$(BIN)/python -m bench.faust_floor

bench-broker: install
	$(BIN)/python -m bench.broker_cpu

bench-producers: install
	$(BIN)/python -m bench.producers

bench-features: install
	$(BIN)/python -m bench.features

bench-replay: install
	$(BIN)/python -m bench.replay $(if $(PINGS),--pings $(PINGS)) $(if $(KEYS),--keys $(KEYS))

bench-notifications: install
	$(BIN)/python -m bench.notifications $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(if $(BURST),--burst $(BURST))

clean:
	-$(BIN)/livetrack broker stop
	-$(BIN)/livetrack connect stop
	-$(BIN)/livetrack postgres stop
	rm -rf .livetrack $(VENDOR) gateway/node_modules
