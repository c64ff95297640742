"""Shared fixtures: a real one-node SLURM cluster, real mpiexec, and a prepared demo experiment.

Markers: `slurm` tests need the cluster (root + Debian's slurm packages, installed by
scripts/bootstrap.sh); `mpi` tests run `mpiexec` from the venv. Both run in CI.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the real local SLURM cluster (started by the slurm_cluster fixture)")
    config.addinivalue_line("markers", "mpi: runs real mpiexec with several ranks")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM cluster; started here (and stopped afterwards, by PID) unless one already runs."""
    from megatron_demix.cluster import local_slurm

    started = local_slurm.start()
    yield
    if started:
        local_slurm.stop()


def run_torchrun(nproc: int, script: Path, args=(), timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone` (a free rendezvous port: no clash with concurrent runs), one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), str(script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="session")
def mpiexec():
    """Run `mpiexec -n N <args>` from the venv (mpich's hydra); returns the CompletedProcess."""
    binary = VENV_BIN / "mpiexec"
    assert binary.exists(), f"{binary} missing: run `bash scripts/bootstrap.sh` (installs the mpich wheel)"

    def run(n: int, args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run([str(binary), "-n", str(n), *map(str, args)], timeout=timeout, **kwargs)

    return run


@pytest.fixture(scope="session")
def demo_config_dict() -> dict:
    """configs/demo.yaml as a dict, with small built-in corpora for speed."""
    import yaml

    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["prepare"] = {**data.get("prepare", {}), "builtin_megabytes": 0.3}
    data["tokenizer"] = {**data.get("tokenizer", {}), "vocab_size": 2048}
    return data


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory, demo_config_dict):
    """The demo experiment with its data prepared (tokenizer + indexed datasets) in a temporary work dir."""
    from megatron_demix.experiment import experiment_from_dict
    from megatron_demix.data.prepare import prepare

    work = tmp_path_factory.mktemp("demo")
    experiment = experiment_from_dict({**demo_config_dict, "work_dir": str(work)}, "demo")
    prepare(experiment)
    return experiment


@pytest.fixture(scope="session")
def eval_experiment(tmp_path_factory):
    """(experiment config path, ExperimentConfig) with base + 2 trained components and built-in tasks, trained
    once per session by the real trainer (torchrun, gloo, CPU):

        base: TP=2 (8 iterations)      code: PP=2 from the base      math: TP=1 from the base

    so every load reshards (TP=2 -> 1, PP=2 -> 1) and merges inputs saved with different chunk layouts.
    Used by tests/eval and tests/hf."""
    from megatron_demix.experiment import load_experiment
    from megatron_demix.eval.builtin_tasks import write_builtin_tasks
    from tests.training.train_helpers import check, torchrun, write_tiny_experiment

    config = write_tiny_experiment(tmp_path_factory.mktemp("eval"), train_iters=2)
    check(torchrun(2, "--config", config, "--component", "base", "--tensor-model-parallel-size", 2))
    check(torchrun(2, "--config", config, "--component", "code", "--pipeline-model-parallel-size", 2))
    check(torchrun(1, "--config", config, "--component", "math"))
    experiment = load_experiment(config)
    write_builtin_tasks(experiment)
    return config, experiment
