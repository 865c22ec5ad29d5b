# The two commands of the README: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test test-e2e test-scale test-mongo lint typecheck security bench bench-quick clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/activate
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/activate
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

var:
	mkdir -p var

run: $(VENV)/.runtime var  ## install, migrate, then serve on http://127.0.0.1:8000
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve

test: $(VENV)/.dev var  ## the whole suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The scale-out lane: every end-to-end test (crash tests included) again on PostgreSQL +
# Redis (broker and cache) + S3 (moto's server mode), with two separate qcluster processes.
# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (skipped without them,
# failed with REQUIRE_SERVICES=1). The browser tests are about the admin's pages, which do
# not change with the lane: they run once, in `make test`.
test-scale: $(VENV)/.dev var  ## the end-to-end suite on PostgreSQL + Redis + S3 with two qclusters
	E2E_LANE=scale $(VENV)/bin/pytest -m "e2e and not browser" $(PYTEST_ARGS)

test-mongo: $(VENV)/.dev var  ## the end-to-end suite against MONGODB_URI (MongoDB 6.0+) and REDIS_URL
	@test -n "$$MONGODB_URI" || { echo "MONGODB_URI is not set, e.g. MONGODB_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0' make test-mongo" >&2; exit 2; }
	$(VENV)/bin/pytest -m e2e tests/test_mongo_server.py -rs $(PYTEST_ARGS)

lint: $(VENV)/.dev  ## ruff, ruff format, and the import-linter contracts of the layers (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy .

# The checks of README, Security; each passes or has a written exception in security/exceptions.md.
security: $(VENV)/.dev  ## bandit, check --deploy, schemathesis on a live server, pip-audit
	$(VENV)/bin/bandit -q -ll -r imageproc requests_app products settings security
	DJANGO_SETTINGS_MODULE=settings.production SECRET_KEY=$$(python3 -c 'import secrets;print(secrets.token_urlsafe(60))') \
	  ALLOWED_HOSTS=images.example.com PUBLIC_BASE_URL=https://images.example.com \
	  $(PY) manage.py check --deploy --fail-level WARNING
	$(PY) -m security.schemathesis_run
	@# pip-audit alone exits 0 ("No known vulnerabilities found") when it could audit nothing;
	@# this fails on that too (security/exceptions.md, A1).
	$(PY) -m security.pip_audit_check

bench: $(VENV)/.dev var
	$(PY) -m bench.run

bench-quick: $(VENV)/.dev var
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) var/test-*
