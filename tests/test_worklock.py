"""One run per work dir (runtime/lock.py, pipeline.py `claim_work_dir`): while a search driver runs, a second
driver, `demix run` and `demix validate` refuse at once naming it; a SIGKILLed holder leaves no stuck lock; a
chain submitted to the real SLURM cluster refuses a second `--submit` while its jobs are queued or running."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN
from tests.search.conftest import synthetic_experiment

DEMIX = str(VENV_BIN / "demix")
SMALL_SEARCH = {"round_sizes": [4, 2], "mixtures_per_task": 4, "top_k": 4, "pool_size": 500}


def _run(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _lock_holder(work) -> dict | None:
    try:
        return json.loads((work / ".lock").read_text())
    except (OSError, ValueError):
        return None


def test_a_second_run_refuses_at_once_naming_the_first_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    config = synthetic_experiment(tmp_path, SMALL_SEARCH, extra_args="--sleep 2")
    work = tmp_path / "work"
    first = subprocess.Popen([sys.executable, "tools/search/run.py", "--config", str(config)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while (_lock_holder(work) or {}).get("pid") != first.pid:
            assert time.monotonic() < deadline and first.poll() is None, "the first driver never took the lock"
            time.sleep(0.2)
        resolved = work / "experiment.yaml"
        while not resolved.exists():
            time.sleep(0.2)
        written = resolved.stat().st_mtime_ns
        for second in ([sys.executable, "tools/search/run.py", "--config", config, "--resume"],
                       [DEMIX, "run", "--config", config], [DEMIX, "run", "--config", config, "--submit"],
                       [DEMIX, "validate", "--config", config]):
            start = time.monotonic()
            out = _run(*second)
            assert out.returncode == 2, (second, out.stderr[-2000:])
            assert f"is in use by pid {first.pid} on {socket.gethostname()} (run.py --config {config}, since " in out.stderr
            assert time.monotonic() - start < 30 and first.poll() is None
        assert resolved.stat().st_mtime_ns == written, "a refused run leaves the running one's experiment.yaml alone"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert _lock_holder(work)["pid"] == first.pid, "the dead holder's lock file is still there"
    again = _run(sys.executable, "tools/search/run.py", "--config", config, "--resume", timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (work / "search" / "final_mixture.json").exists()


@pytest.mark.slurm
def test_a_second_submit_refuses_while_the_chain_is_queued(slurm_cluster, tmp_path):
    from megatron_demix.experiment import load_experiment
    from megatron_demix.pipeline import active_chain

    config = synthetic_experiment(tmp_path, SMALL_SEARCH, executor="slurm")
    # The chain's first job (prepare) runs while the others wait on it; it is cancelled below.
    data = yaml.safe_load(config.read_text())
    data["prepare"] = {"builtin_megabytes": 0.3}
    config.write_text(yaml.safe_dump(data))
    first = _run(DEMIX, "run", "--config", config, "--submit")
    assert first.returncode == 0, first.stderr[-4000:]
    ids = [job["id"] for job in json.loads((tmp_path / "work" / "jobs.json").read_text())["jobs"]]
    try:
        for second in ([DEMIX, "run", "--config", config, "--submit"], [DEMIX, "train", "--config", config],
                       [sys.executable, "tools/search/run.py", "--config", config]):
            out = _run(*second)
            assert out.returncode == 2, (second, out.stderr[-2000:])
            assert "is still queued or running (" in out.stderr and all(i in out.stderr for i in ids[2:]), out.stderr
        assert len(json.loads((tmp_path / "work" / "jobs.json").read_text())["jobs"]) == 4
    finally:
        subprocess.run(["scancel", *ids], check=True)
    experiment = load_experiment(config)
    deadline = time.monotonic() + 60
    while active_chain(experiment):
        assert time.monotonic() < deadline, active_chain(experiment)
        time.sleep(0.5)
