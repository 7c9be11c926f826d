# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install proxygap, run the demo study (report in runs/demo/)
#   make test   - create .venv with test dependencies, run the test suite
# make lint (ruff, then mypy) and make typecheck (mypy only) read [tool.mypy] in pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test bench lint typecheck format clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e ".[dev,oracle]"
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/proxygap run

test: $(VENV)/.dev
	$(PY) -m pytest -n 2 -q

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_bon.py
	$(PY) benchmarks/bench_coverage.py
	$(PY) benchmarks/bench_sampling.py
	$(PY) benchmarks/bench_rl.py
	$(PY) benchmarks/bench_monitor.py
	$(PY) benchmarks/bench_trl_callback.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check proxygap tests benchmarks
	$(VENV)/bin/ruff format --check proxygap tests benchmarks
	$(VENV)/bin/mypy

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

format: $(VENV)/.dev
	$(VENV)/bin/ruff format proxygap tests benchmarks
	$(VENV)/bin/ruff check --fix proxygap tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
