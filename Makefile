# The two Quick start commands: `make demo` and `make test`. Both create .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: demo test test-fast bench bench-ha bench-alerts notebook notebook-run stack-up stack-down stack-status report clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

## demo: run the simulated RAG service with /metrics on 127.0.0.1:8000 (ARGS="--fault errors" ...)
demo: $(VENV)/.runtime-installed
	$(PY) m2_3_monitoring.py $(ARGS)

## test: every test, including the real Prometheus/Alertmanager/Pushgateway ones and the notebook
test: $(VENV)/.dev-installed
	bash scripts/install-debs.sh
	bash scripts/install-node-tools.sh
	$(PY) -m pytest -q $(ARGS)

## bench: the overhead, redaction, SDK, report, cardinality and multi-worker benchmarks (print tables)
bench: $(VENV)/.dev-installed
	$(PY) bench/bench_import.py
	$(PY) bench/bench_overhead.py
	$(PY) bench/bench_redaction.py
	$(PY) bench/bench_sdk.py
	$(PY) bench/bench_prices.py
	$(PY) bench/bench_report.py
	$(PY) bench/bench_cardinality.py
	$(PY) bench/bench_quality_cardinality.py
	$(PY) bench/bench_workers.py

## bench-ha: the HA stack with 1, 4 and 16 app replicas (a few minutes; prints a table)
bench-ha: $(VENV)/.dev-installed
	bash scripts/install-debs.sh
	$(PY) bench/bench_ha.py

## bench-alerts: the live alert matrix, healthy then each fault (about 10 minutes; prints a table)
bench-alerts: $(VENV)/.dev-installed
	bash scripts/install-debs.sh
	$(PY) bench/bench_alerts.py

## notebook: open the course notebook in Jupyter Lab
notebook: $(VENV)/.dev-installed
	bash scripts/install-debs.sh
	$(PY) -m pip install -q --disable-pip-version-check "jupyterlab>=4,<5"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(VENV)/bin/jupyter lab $$( [ "$$(id -u)" -eq 0 ] && echo --allow-root ) M2_3_Production_Monitoring_Dashboard.ipynb

## notebook-run: re-execute the course notebook headless and store it with its outputs (fresh)
notebook-run: $(VENV)/.dev-installed
	bash scripts/install-debs.sh
	$(PY) -m ragmon.course_run

## stack-up / stack-down / stack-status: the local monitoring stack without Docker
stack-up: $(VENV)/.runtime-installed
	bash scripts/install-debs.sh
	$(PY) m2_3_stack.py up $(ARGS)
stack-down: $(VENV)/.runtime-installed
	$(PY) m2_3_stack.py down
stack-status: $(VENV)/.runtime-installed
	$(PY) m2_3_stack.py status

## report: the request-log report for the last hour
report: $(VENV)/.runtime-installed
	$(PY) m2_3_report.py report $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .stack
