# Parley: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(or $(PARLEY_DATA_DIR),.parley)
PACKAGES := libs/parley-protos libs/parley-core libs/parley-client libs/parley-cli libs/parley-agent \
	services/auth services/messaging services/storage services/gateway services/patch-registry
# Installed for development and tests only; never built by `make wheels`, never a runtime dependency.
DEV_PACKAGES := libs/parley-testing
STAMP := $(VENV)/.installed
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES) $(DEV_PACKAGES))

.PHONY: help venv run test test-all test-fast lint proto proto-check wheels clean-data web-deps web chromium promtool

help:
	@echo "make run    start the whole platform (nats-server + every service) in $(DATA_DIR)"
	@echo "            (DATABASE=postgres: the archive in PostgreSQL at $(POSTGRES_URL);"
	@echo "            GATEWAY_PORT=N, WEB_PORT=N: the gateway, the web app on port N if free;"
	@echo "            INSTANCES=messaging=2,gateway=2: several instances of gateway, messaging or auth)"
	@echo "make test   lint, type-check and run the whole test suite"
	@echo "make lint   ruff + mypy;  make proto  regenerate protobuf stubs;  make wheels  build each package"
	@echo "make faults every fault test under load (kill -9 of each service, of nats-server and of each"
	@echo "            node of a 3-node cluster); figures and recovery times in fault-results/"

$(STAMP): constraints.txt requirements-dev.txt $(PYPROJECTS)
	@echo "[parley] installing the Python packages into $(VENV) (a first install takes a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements-dev.txt $(addprefix -e ,$(PACKAGES) $(DEV_PACKAGES))
	touch $@

venv: $(STAMP)

# The web client's packages (web/package-lock.json): protoc-gen-es for `make proto`, Vite for the app.
WEB_STAMP := web/node_modules/.installed
$(WEB_STAMP): web/package.json web/package-lock.json
	@echo "[parley] installing the web client's packages (npm ci in web/)"
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web-deps: $(WEB_STAMP)

# The web app, built by Vite into web/dist, which the gateway serves (PARLEY_WEB_ROOT).
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/console.html web/vite.config.ts web/tsconfig.json
web/dist/index.html: $(WEB_STAMP) $(WEB_SOURCES)
	cd web && npm run --silent build

web: web/dist/index.html

# The browser tests drive Debian's Chromium (Playwright's own browser download does not work here).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji

chromium: $(CHROMIUM)

# deploy/monitoring/'s scrape configuration and alert rules are checked with Prometheus's promtool.
PROMTOOL ?= /usr/bin/promtool
$(PROMTOOL):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

promtool: $(PROMTOOL)

# `make run DATABASE=postgres` keeps the archive in PostgreSQL at POSTGRES_URL (its database must
# exist); DATABASE=postgresql://… names another. Once chosen, the data folder remembers it.
DATABASE ?=
POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/parley
DATABASE_ARG = $(if $(filter postgres,$(DATABASE)),$(POSTGRES_URL),$(DATABASE))

# `make run GATEWAY_PORT=7444 WEB_PORT=8444`: the ports asked for (`parley up --gateway-port`, `--web-port`).
GATEWAY_PORT ?=
WEB_PORT ?=

run: venv web
	PARLEY_WEB_ROOT=$(CURDIR)/web/dist $(BIN)/parley --data-dir $(DATA_DIR) up \
		$(if $(DATABASE_ARG),--database-url '$(DATABASE_ARG)') $(if $(GATEWAY_PORT),--gateway-port $(GATEWAY_PORT)) \
		$(if $(WEB_PORT),--web-port $(WEB_PORT)) $(if $(INSTANCES),--instances $(INSTANCES))

# Test modules run on TEST_WORKERS processes (each module whole on one, so its platform starts
# once); most of a test's time is waiting on servers, so three workers keep two cores busy (on a
# quiet 2-core machine two workers took 17.5 minutes).
# Modules go out in collection order, the whole-platform ones first (parley_testing.fixtures).
TEST_WORKERS ?= 3

test: venv lint proto-check web chromium promtool
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# Everything, the long fault and upgrade runs marked `slow` included.
test-all: venv lint proto-check web chromium promtool
	$(BIN)/pytest -m "" --durations=25

test-fast: venv
	$(BIN)/pytest -m "not e2e and not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy scripts/gen_protos.py examples
	MYPYPATH=loadtests $(BIN)/mypy loadtests/parley_bench loadtests/parley_load loadtests/locustfile.py

proto: venv web-deps
	$(BIN)/python scripts/gen_protos.py

proto-check: venv web-deps
	$(BIN)/python scripts/gen_protos.py --check

wheels: venv
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist $(PACKAGES)
	@ls dist

clean-data:
	rm -rf $(DATA_DIR)

# --- load, benchmarks and fault tests (loadtests/, tests/faults/) ---
USERS ?= 50
SPAWN_RATE ?= 5
DURATION ?= 2m
HOST ?=
PROCESSES ?=
LOAD_REPORTS ?= loadtests/reports

.PHONY: load bench bench-quick bench-reseed faults upgrade-load

load: venv
	mkdir -p $(LOAD_REPORTS)
	PARLEY_DATA_DIR=$(DATA_DIR) $(BIN)/locust -f loadtests/locustfile.py --headless \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(DURATION) \
		$(if $(HOST),--host $(HOST)) $(if $(PROCESSES),--processes $(PROCESSES)) \
		--csv $(LOAD_REPORTS)/parley --html $(LOAD_REPORTS)/parley.html --only-summary

bench: venv
	cd loadtests && ../$(BIN)/python -m parley_bench --out ../bench-results $(BENCH_ARGS)

bench-quick: venv
	cd loadtests && ../$(BIN)/python -m parley_bench --quick --out ../bench-results $(BENCH_ARGS)

# Re-seeding a restored event log against one-at-a-time publishing, as a same-run ratio.
RESEED_EVENTS ?= 20000
bench-reseed: venv
	cd loadtests && ../$(BIN)/python -m parley_bench.reseed --events $(RESEED_EVENTS)

faults: venv
	PARLEY_FAULT_RESULTS=fault-results $(BIN)/pytest tests/faults -m "slow or e2e" -v -s

# The property-based run of every gateway call with many more examples than `make test` takes.
.PHONY: fuzz
fuzz: venv
	PARLEY_FUZZ_PROFILE=thorough $(BIN)/pytest tests/e2e/test_edge_input.py -k random_requests -q

# Messaging rolled out through the patch registry under Locust load (the short run is in `make faults`).
UPGRADE_USERS ?= 40
UPGRADE_SPAWN_RATE ?= 5
UPGRADE_SENDS_BEFORE ?= 400

upgrade-load: venv
	PARLEY_FAULT_RESULTS=fault-results PARLEY_LOAD_REPORTS=$(LOAD_REPORTS)/upgrade \
	PARLEY_UPGRADE_USERS=$(UPGRADE_USERS) PARLEY_UPGRADE_SPAWN_RATE=$(UPGRADE_SPAWN_RATE) \
	PARLEY_UPGRADE_SENDS_BEFORE=$(UPGRADE_SENDS_BEFORE) \
		$(BIN)/pytest tests/faults/test_rolling_upgrade_under_load.py -m slow -v -s
