# The two README commands. Both set up everything they need first (idempotent).
#   make demo    the DeMix pipeline on the built-in corpora and the tiny model (CPU, one machine)
#   make test    the test suite (real local SLURM cluster, real mpiexec, real gloo process groups)
SHELL := /bin/bash
VENV := .venv
CONFIG ?= configs/demo.yaml

.PHONY: setup demo test bench
setup:
	@bash scripts/bootstrap.sh

# The demo's jobs go to a real one-node SLURM cluster on this machine (left running afterwards;
# stop it with `.venv/bin/python -m megatron_demix.cluster.local_slurm stop`).
demo: setup
	$(VENV)/bin/python -m megatron_demix.cluster.local_slurm start
	$(VENV)/bin/demix run --config $(CONFIG)

# Two pytest-xdist workers, one per core; tests sharing a trained fixture stay on one worker
# (tests/conftest.py). PYTEST_WORKERS=0 runs them in this process, one after another.
PYTEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder tests $(PYTEST_ARGS)
