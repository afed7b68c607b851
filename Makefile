# Every target is idempotent: run it twice and the second run only checks.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
PROFILE ?= demo
export UV_COMPILE_BYTECODE := 1

.PHONY: help setup fetch browser demo test test-unit test-integration lint compose-check k8s-check compose-secrets bench chaos stack-down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)

$(VENV)/.installed: $(BIN)/uv requirements.txt pyproject.toml
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(VENV)/.installed fetch  ## Python env in .venv/ and every server binary in the cache

fetch: $(VENV)/.installed  ## fetch Cassandra, Kafka, agents, Prometheus, Alertmanager, statsd_exporter (cached)
	$(BIN)/retail stack fetch

browser:  ## Debian's chromium and chromium-driver for the browser tests (installed when missing)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| scripts/apt-install chromium chromium-driver

demo: setup  ## the main job: three-DC stack, migrations, consumers, an event stream, the report
	$(BIN)/retail demo --profile $(PROFILE)

test: setup lint compose-check k8s-check test-unit test-integration  ## everything CI runs

test-unit: $(VENV)/.installed k8s-check  ## unit tests and DAG integrity tests, no services (the chart tests need the helm that k8s-check installs)
	$(BIN)/pytest tests/unit tests/dags -q

test-integration: setup browser  ## integration tests on the real local stack (started once, stopped after)
	$(BIN)/pytest tests/integration -q

lint: $(VENV)/.installed  ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The secrets compose.yaml requires, each given a throwaway value here: only the file is checked.
COMPOSE_SECRETS := $(shell sed -nE 's/^([A-Z][A-Z0-9_]*)=.*/\1/p' docker/secrets.example.env)

compose-check:  ## validate docker/compose.yaml with Debian's docker-compose (no engine needed)
	@command -v docker-compose >/dev/null || scripts/apt-install docker-compose
	env $(foreach v,$(COMPOSE_SECRETS),$(v)=compose-check-throwaway) \
		docker-compose -f docker/compose.yaml config -q

# helm and kubeconform are go install-ed into the cache when missing; the Kubernetes schemas come
# from the kubernetes-validate package. Nothing is deployed: see deploy/helm/README.md.
k8s-check: $(VENV)/.installed  ## helm lint --strict, helm template and kubeconform -strict on the Helm chart, offline
	$(BIN)/python deploy/helm/check.py

compose-secrets: $(VENV)/.installed  ## generate the Compose deployment's logins, CA and certificates into docker/secrets (kept)
	$(BIN)/retail stack secrets --out docker/secrets

bench: setup  ## pipeline benchmark: raw-driver ceiling, naive consumer, our consumers, latency, RSS
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/audit.py

chaos: setup  ## ten minutes of faults on the demo stack (started if none runs), then the reconcile
	$(BIN)/python bench/chaos.py --duration 600
stack-down: $(VENV)/.installed  ## stop every process the local stack started
	$(BIN)/retail stack down

clean: stack-down  ## remove the venv and the stack's runtime state (the download cache stays)
	rm -rf $(VENV) .run
