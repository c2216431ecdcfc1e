# Aegis: every target creates the virtual environment it needs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast bench lint format clean

install: $(STAMP)

# constraints.txt pins every transitive version, so the resolve is fast and
# identical everywhere; refresh it with `make constraints` after changing deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# pip compiles the packages it installs, not an editable one's sources: compiled here, so
	# every aegis process skips compiling them where PYTHONDONTWRITEBYTECODE is set (containers)
	$(BIN)/python -m compileall -q aegis flows tasks
	# the incident report's test renders it in a real headless browser (Debian's chromium)
	command -v chromium >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium missing: the report's browser test will fail"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aegis demo demo-workspace

# The import-linter contracts (layering, in pyproject.toml) first: a broken layer fails fast.
# Two pytest-xdist workers, a test file each at a time (its module fixtures built once);
# each worker starts its own services in its own process group (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_defenses.py
	$(BIN)/python benchmarks/bench_dp.py
	$(BIN)/python benchmarks/bench_registry.py
	$(BIN)/python benchmarks/bench_dask.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_theft.py
	$(BIN)/python benchmarks/bench_monitor.py
	$(BIN)/python benchmarks/bench_drill.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^aegis' > constraints.txt

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache .ruff_cache
