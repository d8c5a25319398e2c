# Two commands matter: `make demo` (the main job on the embedded default) and `make test` (everything CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NEWEST_ISSUE = $(lastword $(sort $(wildcard issues/????-??-??-*.yaml)))

.PHONY: demo test lint typecheck unit golden system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## demo: check the samples, import the sample subscribers, render the newest issue and send it to
## them through the local outbox (SQLite store in var/, messages in outbox/; no account needed)
demo: $(STAMP)
	$(BIN)/newsletter check
	$(BIN)/newsletter subscribers import subscribers/sample.csv
	$(BIN)/newsletter render $(NEWEST_ISSUE)
	$(BIN)/newsletter send $(NEWEST_ISSUE) --yes

## system-deps: Debian's Chromium (page tests), PostgreSQL (store tests), SpamAssassin (spam score tests),
## Dovecot (the bounce mailbox tests' IMAP server) and npm (axe-core for the accessibility tests), when missing
system-deps:
	@if ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| ! command -v spamassassin >/dev/null || ! { command -v dovecot || [ -x /usr/sbin/dovecot ]; } >/dev/null \
		|| ! command -v npm >/dev/null; then \
		echo "Installing Chromium, PostgreSQL, SpamAssassin, Dovecot and npm from Debian's packages"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium fonts-dejavu-core postgresql spamassassin dovecot-imapd \
			$$(command -v npm >/dev/null || echo nodejs npm) >/dev/null; \
	fi

## test: lint, type-check and the whole test suite (what CI runs)
test: $(STAMP) system-deps lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -W error

## golden: regenerate tests/golden/ after an intended template change (review the diff!)
golden: $(STAMP)
	$(BIN)/python -m tests.golden

## bench: print the performance figures (not part of `make test`)
bench: $(STAMP)
	$(BIN)/python bench/render.py
	$(BIN)/python bench/audience.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/dkim.py
	$(BIN)/python bench/bounces.py
	$(BIN)/python -m bench.webhook && $(BIN)/python -m bench.webhook --pg
	$(BIN)/python -m bench.startup
	$(BIN)/python bench/report.py
	$(BIN)/python -m bench.welcome
	$(BIN)/python -m bench.clicks
	$(BIN)/python -m bench.preview
	$(BIN)/python -m bench.imports && $(BIN)/python -m bench.imports --pg

clean:
	rm -rf $(VENV) rendered .pytest_cache .mypy_cache .ruff_cache
