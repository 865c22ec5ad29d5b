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

test-mongo: $(VENV)/.dev var  ## the end-to-end suite against MONGODB_URI
	$(VENV)/bin/pytest -m e2e tests/test_mongo_server.py $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy .

security: $(VENV)/.dev
	$(VENV)/bin/bandit -q -ll -r imageproc requests_app products settings
	$(VENV)/bin/pip-audit -r requirements.txt --progress-spinner off
	DJANGO_SETTINGS_MODULE=settings.production SECRET_KEY=$$(python3 -c 'import secrets;print(secrets.token_urlsafe(60))') \
	  ALLOWED_HOSTS=images.example.com PUBLIC_BASE_URL=https://images.example.com \
	  $(PY) manage.py check --deploy --fail-level WARNING

bench: $(VENV)/.dev var
	$(PY) -m bench.run

bench-quick: $(VENV)/.dev var
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) var/test-*
