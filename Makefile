# Set-up and everyday commands. `make run` opens the console; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench docs tensorboard clean

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

# TensorBoard on the runs written with logging.tensorboard = true (RUNS=DIR for another output folder), served on
# 127.0.0.1:6006 (--bind_all to serve every address is yours to choose). It lives in a venv of its own, made on
# first use, since it only reads event files and its dependencies need not meet the engine's.
RUNS ?= runs
TB_VENV ?= .venv-tensorboard
tensorboard:
	@test -x $(TB_VENV)/bin/tensorboard || (python3 -m venv $(TB_VENV) && $(TB_VENV)/bin/pip install -q tensorboard==2.21.0)
	$(TB_VENV)/bin/tensorboard --logdir $(RUNS) --host 127.0.0.1 --port 6006

docs: $(STAMP)
	$(PY) -m engine.docs README.md

clean:
	rm -rf $(VENV) $(TB_VENV) .pytest_cache
