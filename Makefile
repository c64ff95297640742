# The two README commands. Both set up everything they need first (idempotent).
#   make demo    the DeMix pipeline on the built-in corpora and the tiny model (CPU, one machine)
#   make test    the test suite (real local SLURM cluster, real mpiexec, real gloo process groups)
SHELL := /bin/bash
VENV := .venv
CONFIG ?= configs/demo.yaml

.PHONY: setup setup-compat demo test test-compat bench
setup:
	@bash scripts/bootstrap.sh

# .venv-compat: the same set-up with the oldest supported megatron-core (constraints.txt, `# compat:`).
setup-compat:
	@bash scripts/bootstrap.sh --compat

# The demo's jobs go to a real one-node SLURM cluster on this machine (left running afterwards;
# stop it with `.venv/bin/python -m megatron_demix.cluster.local_slurm stop`).
demo: setup
	$(VENV)/bin/python -m megatron_demix.cluster.local_slurm start
	$(VENV)/bin/demix run --config $(CONFIG)

# Two pytest-xdist workers, one per core; tests sharing a trained fixture stay on one worker
# (tests/conftest.py). PYTEST_WORKERS=0 runs them in this process, one after another.
PYTEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=25 tests $(PYTEST_ARGS)

# The compatibility subset on the oldest supported megatron-core (CI's second run): TP2 and PP2
# training with resume and the signal save, the merge, evaluation, HF export, and checkpoints
# moving both ways between .venv's release and this one (tests/runtime/test_versions.py).
# DEMIX_PYTHON: the SLURM job scripts run .venv-compat too.
COMPAT_VENV := .venv-compat
COMPAT_TESTS := tests/training/test_trainer.py tests/merge/test_merge_mpi.py tests/eval/test_eval_model.py \
	tests/hf/test_export.py tests/runtime/test_versions.py
test-compat: setup setup-compat
	DEMIX_PYTHON=$(abspath $(COMPAT_VENV))/bin/python DEMIX_OTHER_PYTHON=$(abspath $(VENV))/bin/python \
	$(COMPAT_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(COMPAT_TESTS) $(PYTEST_ARGS)
