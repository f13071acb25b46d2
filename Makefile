# Two commands matter: `make up` and `make test`. Everything they need is installed on first use.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up down status restart logs test lint lock bench bench-quick chaos drill kafka-jars clean help

help:
	@echo "make up      start Kafka, PostgreSQL and the services in the background"
	@echo "make down    stop everything 'make up' started"
	@echo "make status  show what is running"
	@echo "make restart SERVICE=sync   stop one service of the make up stack and start it again (with FAPIAO_REPLICAS: each replica in turn; SERVICE=sync-2 one)"
	@echo "make logs    show recent logs (SERVICE=issuer to pick one, FOLLOW=1 to follow)"
	@echo "make test    run the whole test suite on its own private infrastructure"
	@echo "make lint    ruff, mypy (shared/, services/, fapiao/) and pip-audit over requirements.lock"
	@echo "make lock    pin every dependency again (requirements.lock) from a fresh resolution of pyproject.toml"
	@echo "make chaos   run the whole fault-drill catalogue (drills/*.toml) on private infrastructure; see docs/drills.md"
	@echo "make drill   run some drills: make drill DRILLS='kill-sync store-outage' DRILL_ARGS='--duration 20'"
	@echo "make bench   measure throughput and latency on private infrastructure (BENCH_ARGS='--invoices 2000 --duration 10')"
	@echo "make bench-quick   the same in under 90 s, for a developer's loop (2,000 invoices, 10 s at 200/s, small (g), (h), (i))"

# requirements.lock pins every package (the dev tools too) to the versions the suite last passed with; `make lock`
# writes it again from a fresh resolution of pyproject.toml.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

lock:
	@rm -rf .cache/lock-venv && $(PY) -m venv .cache/lock-venv
	@.cache/lock-venv/bin/python -m pip install -q --upgrade pip
	@.cache/lock-venv/bin/python -m pip install -q -e '.[dev]'
	@{ echo "# Every package \`make test\` and the services install, pinned: \`make lock\` writes this file from a fresh"; \
	   echo "# resolution of pyproject.toml (its [dev] extra included); the Makefile and the Dockerfile install with"; \
	   echo "# -c requirements.lock, and \`make lint\` audits these versions."; \
	   .cache/lock-venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	@rm -rf .cache/lock-venv
	@echo "requirements.lock: $$(grep -c '==' requirements.lock) packages pinned"

kafka-jars: $(STAMP)
	@$(BIN)/python -m fapiao.stack fetch-kafka

up: $(STAMP)
	@$(BIN)/python -m fapiao.stack up

down: $(STAMP)
	@$(BIN)/python -m fapiao.stack down

status: $(STAMP)
	@$(BIN)/python -m fapiao.stack status

restart: $(STAMP)
	@test -n "$(SERVICE)" || { echo "usage: make restart SERVICE=sync"; exit 2; }
	@$(BIN)/python -m fapiao.stack restart $(SERVICE)

logs: $(STAMP)
	@$(BIN)/python -m fapiao.stack logs $(if $(SERVICE),--service $(SERVICE),) $(if $(FOLLOW),--follow,)

# The Kafka jars are only needed when the tests start their own broker.
test: $(STAMP) $(if $(FAPIAO_TEST_KAFKA_BOOTSTRAP),,kafka-jars)
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/mypy shared services fapiao
	@$(BIN)/python -m fapiao.depaudit

# Not part of `make test`: starts its own Kafka, PostgreSQL and services; see docs/performance.md.
bench: $(STAMP) kafka-jars
	@$(BIN)/python -m fapiao.bench $(BENCH_ARGS)

bench-quick: $(STAMP) kafka-jars
	@$(BIN)/python -m fapiao.bench --invoices 2000 --duration 10 --steps '' --after-batch 0 --outage 10 --outage-after 10 \
	  --flaky 5 --flaky-settle 10 --reconciler-scale 100000 --reconciler-unconfirmed 2000 $(BENCH_ARGS)

clean: down
	rm -rf .run .test-artifacts

# Fault drills (docs/drills.md): start their own Kafka, PostgreSQL, services and Toxiproxy; reports in drill-results/.
chaos: $(STAMP) kafka-jars
	@$(BIN)/fapiao drill run all $(DRILL_ARGS)

drill: $(STAMP) kafka-jars
	@$(BIN)/fapiao drill run $(or $(DRILLS),baseline) $(DRILL_ARGS)
