# The README's two commands: `make dev` runs the broker on its embedded default; `make test` passes the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: dev test install install-test build-deps system-deps node-deps lint typecheck clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY) build-deps
	$(PY) -m pip install -q -e '.[dev]'

## Headers python-ldap compiles against (OpenLDAP's libldap and Cyrus SASL).
build-deps:
	@if ! dpkg -s libldap-dev libsasl2-dev >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends libldap-dev libsasl2-dev; \
	fi

## Run the broker offline: SQLite, a demo break-glass account, a local STS emulator.
dev: install
	$(VENV)/bin/broker dev

## Debian packages the tests need: Chromium for the browser tests, xmlsec1 for the SAML identity provider peer,
## slapd and ldap-utils for the LDAP directory peer, SimpleSAMLphp (with PHP) as a second SAML identity provider,
## curl for the token-exchange command `broker dev` prints, wrk for the benchmarks' load generator, and
## Prometheus for promtool, which checks and unit-tests the alert rules in deploy/prometheus.
system-deps: build-deps
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v xmlsec1 >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium xmlsec1 wrk; \
	fi
	@if ! command -v /usr/sbin/slapd >/dev/null 2>&1 || ! command -v ldapadd >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends slapd ldap-utils; \
	fi
	@if ! command -v php >/dev/null 2>&1 || [ ! -d /usr/share/simplesamlphp/www ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			simplesamlphp php-cli php-xml php-mbstring; \
	fi
	@if ! command -v curl >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends curl; \
	fi
	@if ! command -v promtool >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; \
	fi

## The real OpenID Connect provider the tests talk to (npm oidc-provider, pinned by the lock file).
node-deps:
	npm ci --prefix tests/peers/oidc --no-audit --no-fund --loglevel=error

install-test: $(PY) system-deps node-deps
	$(PY) -m pip install -q -e '.[dev,test]'

lint:
	$(VENV)/bin/ruff check broker tests migrations bench
	$(VENV)/bin/ruff format --check broker tests migrations bench

typecheck:
	$(VENV)/bin/mypy

## Everything: lint, strict types, and the whole suite on SQLite and PostgreSQL against real peers.
test: install-test lint typecheck
	$(PY) -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tests/peers/oidc/node_modules
