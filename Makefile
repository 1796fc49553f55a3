# Everything runs from a virtualenv this Makefile creates from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB    ?= jobs/nightly-clinic-precheck.toml
PY_SRC := batch spine_sim tests bench
# Tools that are not the project's dependencies (uv for the lock, pip-audit) live in their own venvs here.
TOOLS  := .venv-tools
UV_VERSION        := 0.13.9
PIP_AUDIT_VERSION := 2.10.1
PY_SPY_VERSION    := 0.4.3

.PHONY: run test lint typecheck bench certs lock audit clean mutation

# requirements.lock pins every runtime and dev package (with hashes); the project itself goes in on top,
# editable and without dependencies, so nothing unpinned is installed.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m spine_sim.demo $(JOB)

test: $(STAMP) $(TOOLS)/profile/bin/py-spy
	$(BIN)/ruff check $(PY_SRC)
	$(BIN)/mypy batch
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check $(PY_SRC)
	$(BIN)/ruff format --check $(PY_SRC)

# Strict mypy (settings in pyproject.toml); `make test` runs it too.
typecheck: $(STAMP)
	$(BIN)/mypy batch

# Every performance figure beside its goal (bench/README.md); BENCH_SIZE=0.1 for a quick look. py-spy, for the
# CPU breakdown, lives in a venv of its own: it is a tool, not a dependency.
$(TOOLS)/profile/bin/py-spy:
	$(PYTHON) -m venv $(TOOLS)/profile
	$(TOOLS)/profile/bin/python -m pip install --quiet 'py-spy==$(PY_SPY_VERSION)'

bench: $(STAMP) $(TOOLS)/profile/bin/py-spy
	$(BIN)/python bench/run.py

# Mutation testing (issue 8; not in CI, it takes long): each module listed in tools/mutation.toml against its
# own unit tests only, a seeded sample of at most 150 mutants per module, timeouts counted as killed. Prints a
# score table, updates tools/MUTATION.md, fails below 90%. `make mutation MODULES="batch/mime.py"` for some.
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py $(MODULES)

certs: $(STAMP)
	$(BIN)/cpis-batch certs .dev-pki

# Re-resolve requirements.lock from pyproject.toml (runtime + dev, Linux x86_64, Python 3.11). uv keeps the
# versions already pinned unless pyproject.toml no longer allows them; `make lock UPGRADE=1` takes the newest.
$(TOOLS)/uv/bin/uv:
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

lock: $(TOOLS)/uv/bin/uv
	$(TOOLS)/uv/bin/uv pip compile --quiet --generate-hashes --extra dev \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) \
		pyproject.toml -o requirements.lock

# Known vulnerabilities in the locked packages, from PyPI's JSON API (so it needs that service; not run in
# CI). --disable-pip: the lock is fully pinned and hashed, nothing needs resolving. --strict: a package whose
# vulnerability data cannot be fetched fails the audit, instead of being skipped under "No known vulnerabilities".
$(TOOLS)/audit/bin/pip-audit:
	$(PYTHON) -m venv $(TOOLS)/audit
	$(TOOLS)/audit/bin/python -m pip install --quiet 'pip-audit==$(PIP_AUDIT_VERSION)'

audit: $(TOOLS)/audit/bin/pip-audit
	$(TOOLS)/audit/bin/pip-audit --requirement requirements.lock --require-hashes --disable-pip --strict --progress-spinner off

clean:
	rm -rf $(VENV) $(TOOLS) .dev-pki out state
