# Two commands do all the set-up:  `make run` (the example sweep on SQLite)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch (a local wheel on the project's machines; pip falls back to PyPI).
TORCH  ?= torch==2.13.0

.PHONY: setup system-deps run test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/system-deps.sh

run: setup
	$(VENV)/bin/gridsweep run examples/moons.yaml

lint: setup
	$(VENV)/bin/ruff check .

test: setup system-deps lint
	$(VENV)/bin/pytest -q -ra --durations=15

bench: setup
	$(PY) bench/fused.py

clean:
	rm -rf $(VENV) *.db *.db-wal *.db-shm .pytest_cache
