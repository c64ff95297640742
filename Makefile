# The two README commands. Both set up everything they need first (idempotent).
#   make demo    the DeMix pipeline on the built-in corpora and the tiny model (CPU, one machine)
#   make test    the test suite (real local SLURM cluster, real mpiexec, real gloo process groups)
SHELL := /bin/bash
VENV := .venv
CONFIG ?= configs/demo.yaml

.PHONY: setup demo test bench
setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/demix demo --config $(CONFIG)

test: setup
	$(VENV)/bin/python -m pytest -q tests $(PYTEST_ARGS)
