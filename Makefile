# Set-up and everyday commands. `make run` opens the console; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench docs clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tunix-tui --profile profiles/quickstart.toml

# Tests run in up to 4 worker processes (pytest-xdist), one per core: many wait on engine processes and terminals.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/sampler_bench.py
	$(PY) bench/grpo_step_bench.py
	$(PY) bench/console_bench.py

docs: $(STAMP)
	$(PY) -m engine.docs README.md

clean:
	rm -rf $(VENV) .pytest_cache
