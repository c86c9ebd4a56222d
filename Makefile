# `make demo` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,events]"
	@touch $(STAMP)

# run twice, the previous demo run is kept as runs/demo.old-<time> (--overwrite moves it aside, never deletes)
demo: $(STAMP)
	$(VENV)/bin/spikformers train --out runs/demo --overwrite
	$(VENV)/bin/spikformers energy --checkpoint runs/demo --data digits

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	@mkdir -p runs/bench
	$(PY) benchmarks/bench_cpu.py --builds native x86-64-v3 --repeats 3 --json-dir runs/bench/cpu \
		--state-dir runs/bench/states --out runs/bench/cpu.md

clean:
	rm -rf $(VENV) runs .pytest_cache
