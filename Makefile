# Everything runs from a virtualenv this Makefile creates from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB    ?= jobs/nightly-clinic-precheck.toml

.PHONY: run test lint bench certs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m spine_sim.demo $(JOB)

test: $(STAMP)
	$(BIN)/ruff check batch tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check batch tests bench
	$(BIN)/ruff format --check batch tests bench

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

certs: $(STAMP)
	$(BIN)/cpis-batch certs .dev-pki

clean:
	rm -rf $(VENV) .dev-pki out state
