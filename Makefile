# Two commands do all the set-up:  `make run` (the example sweep on SQLite)  and  `make test`.
# `make run` installs what running needs (the package); `make test` adds the test extras.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch (a local wheel on the project's machines; pip falls back to PyPI).
TORCH  ?= torch==2.13.0

.PHONY: setup setup-test system-deps run test lint bench clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# Runtime: torch and the package (what `gridsweep` needs), no test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

# The test extras on top (pytest, ruff, playwright, schemathesis, ...).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/system-deps.sh

run: setup
	$(VENV)/bin/gridsweep run examples/moons.yaml

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The reproducibility test runs again with an AVX2 CPU's kernels (torch's and MKL's), whatever
# this CPU is: a trial's numbers must not depend on its pack under either SIMD width.
# Two test processes, a file each at a time (most tests wait on the servers and workers they
# start; a module's fixtures are set up once), then the tests
# that must run alone (a PostgreSQL restart would break the other process's tests).
test: setup-test system-deps lint
	$(VENV)/bin/pytest -q -ra --durations=15 -n 2 --dist loadfile -m "not serial"
	$(VENV)/bin/pytest -q -ra -m serial
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(VENV)/bin/pytest -q -ra tests/test_repro.py

bench: setup
	$(PY) bench/fused.py

clean:
	rm -rf $(VENV) *.db *.db-wal *.db-shm .pytest_cache
