"""Shared fixtures: a real one-node SLURM cluster, real mpiexec, and a prepared demo experiment.

Markers: `slurm` tests need the cluster (root + Debian's slurm packages, installed by
scripts/bootstrap.sh); `mpi` tests run `mpiexec` from the venv. Both run in CI.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`), and each worker
builds its own session fixtures. So the tests that share an expensive trained fixture are one work
unit of the scheduler below (they run on one worker, which trains it once), and the groups are handed
out longest first, so that no worker starts a long group near the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# One thread per process, in the workers and every job they start (the pipeline's own jobs included): two
# workers share two cores, and a process at 2 threads on a busy core runs several times slower
# (runtime/distributed.py: share_cpus). Set before any worker imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the real local SLURM cluster (started by the slurm_cluster fixture)")
    config.addinivalue_line("markers", "mpi: runs real mpiexec with several ranks")


# Expensive shared fixtures -> their group, longest group first (seconds on the 2-core CI machine:
# fixture + the tests that use it). A test using fixtures of two groups would tie both to one worker:
# `_group_of` refuses that, so that a new test cannot silently serialise the suite. Only fixtures a test
# names are seen: one fetched with `request.getfixturevalue` is built again on the other worker.
SHARED_FIXTURE_GROUPS = {
    "trained": "pipeline",               # tests/test_pipeline.py: `demix train`, 3 pipeline runs, the CI validate (~480 s)
    "trained_base": "trained-base",      # tests/training: the TP=2 base + resumes, SLURM arrays (~300 s)
    "eval_experiment": "eval-models",    # base TP=2, code PP=2, math TP=1: tests/eval, tests/hf (~250 s)
    "qwen3_checkpoint": "eval-models",
    "checkpoints": "merge-checkpoints",  # tests/merge: four saved GPTs (~130 s)
    "trained_run": "merge-run",          # tests/merge/test_run_average.py: a run saving every 2 iterations (~60 s)
    "searches": "search-runs",           # tests/search/test_search.py: a synthetic search per seed (~40 s)
}
GROUP_ORDER = list(dict.fromkeys(SHARED_FIXTURE_GROUPS.values()))
GROUPS_FILE = "demix_fixture_groups"  # workerinput key: where workers write {nodeid: group}


def _group_of(item) -> str | None:
    groups = {SHARED_FIXTURE_GROUPS[f] for f in item.fixturenames if f in SHARED_FIXTURE_GROUPS}
    if len(groups) > 1:
        raise pytest.UsageError(f"{item.nodeid} uses fixtures of the groups {sorted(groups)}: that ties them to one"
                                " worker; use one family of shared fixtures per test (tests/conftest.py)")
    return groups.pop() if groups else None


def pytest_collection_modifyitems(config, items):
    """Longest groups first: the scheduler hands out work units in collection order."""
    rank = {group: i for i, group in enumerate(GROUP_ORDER)}
    items.sort(key=lambda item: rank.get(_group_of(item), len(rank)))  # stable: file order within a group


@pytest.hookimpl(tryfirst=True)  # before xdist sends the collection to the controller
def pytest_collection_finish(session):
    """xdist worker: tell the controller each test's group (it sees node ids only, not fixtures)."""
    path = getattr(session.config, "workerinput", {}).get(GROUPS_FILE)
    if path:
        from megatron_demix.runtime.files import atomic_write_json

        groups = {item.nodeid: _group_of(item) for item in session.items}
        atomic_write_json(Path(path), {nodeid: group for nodeid, group in groups.items() if group})


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller: where this worker writes the groups (one file per run; both workers write the same)."""
    node.workerinput[GROUPS_FILE] = str(Path(node.config.option.basetemp or tempfile.gettempdir())
                                        / f"demix-fixture-groups-{os.getpid()}.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`, with the groups from the tests' fixtures. (xdist's own loadgroup reads `xdist_group`
    marks into node ids, which pytest 9 no longer lets it change.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FixtureGroupScheduling(LoadScopeScheduling):
        """One work unit per group of tests sharing a fixture, one per other test (all collections are in by the
        time xdist splits them, so the workers' group files exist)."""

        def _split_scope(self, nodeid: str) -> str:
            if not hasattr(self, "groups"):
                path = next(Path(n.workerinput[GROUPS_FILE]) for n in self.nodes)
                self.groups = json.loads(path.read_text())
            return self.groups.get(nodeid, nodeid)

    return FixtureGroupScheduling(config, log)


@pytest.fixture(scope="session")
def slurm_cluster(request):
    """A running one-node SLURM cluster; started here unless one already runs, and stopped afterwards (by
    PID) by whoever started it: this process, or, under xdist, the controller once every worker is done."""
    from megatron_demix.cluster import local_slurm

    started = local_slurm.start()
    yield
    worker_output = getattr(request.config, "workeroutput", None)  # set on xdist workers only
    if started and worker_output is None:
        local_slurm.stop()
    elif started:
        worker_output["started_slurm"] = True


STOP_SLURM = pytest.StashKey[bool]()  # xdist controller: a worker started the cluster


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: a worker is done; remember whether it started the cluster."""
    if getattr(node, "workeroutput", {}).get("started_slurm"):
        node.config.stash[STOP_SLURM] = True


def pytest_sessionfinish(session):
    if session.config.stash.get(STOP_SLURM, False):
        from megatron_demix.cluster import local_slurm

        local_slurm.stop()


def run_torchrun(nproc: int, script: Path, args=(), timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone` (a free rendezvous port: no clash with concurrent runs)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), str(script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def sbatch_and_wait(args: list, timeout: float = 600, **kwargs) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """`sbatch --parsable ARGS`, then poll every 0.5 s until no task of the job is pending or running; returns
    the submission and {task: 'STATE exit'}. (`sbatch --wait` polls at 2, 4, 8, then every 10 s: up to 10 s
    idle per job.)"""
    from megatron_demix.cluster.config import ClusterConfig
    from megatron_demix.cluster.executor import SlurmExecutor

    submit = subprocess.run(["sbatch", "--parsable", *map(str, args)], capture_output=True, text=True, timeout=60, **kwargs)
    if submit.returncode != 0:
        return submit, {}
    poller = SlurmExecutor(ClusterConfig(), log_dir=REPO)  # the executor's poller; it submits nothing here
    return submit, poller.wait_job(submit.stdout.strip().split(";")[0], timeout, max_delay=0.5)


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
    from megatron_demix.data.builtin_tasks import write_builtin_tasks
    from tests.training.train_helpers import check, torchrun, write_tiny_experiment

    config = write_tiny_experiment(tmp_path_factory.mktemp("eval"), train_iters=2)
    check(torchrun(2, "--config", config, "--component", "base", "--tensor-model-parallel-size", 2))
    check(torchrun(2, "--config", config, "--component", "code", "--pipeline-model-parallel-size", 2))
    check(torchrun(1, "--config", config, "--component", "math"))
    experiment = load_experiment(config)
    write_builtin_tasks(experiment)
    return config, experiment
