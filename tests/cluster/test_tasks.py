"""Arrays of tasks with per-task manifests return result records, on the real local SLURM cluster and locally."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from megatron_demix.cluster.config import ClusterConfig
from megatron_demix.cluster.executor import JobSpec, LocalExecutor, SlurmExecutor, parse_task_states
from megatron_demix.cluster.tasks import Call, TaskArray, Watcher

SCRIPT = "slurm/eval_proxy.sh"


# Task functions: the task runner imports them by name (the tests run from the repository root).
def square(x: int) -> dict:
    return {"square": x * x, "pid": os.getpid()}


def explode(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no chance to write a record: the watcher must notice


def _calls():
    here = "tests.cluster.test_tasks"
    return [Call(f"{here}:square", {"x": 3}), Call(f"{here}:explode", {"message": "bad batch 1"}),
            Call(f"{here}:square", {"x": 5}), Call(f"{here}:die")]


def _executor(request, backend, tmp_path):
    if backend is SlurmExecutor:
        request.getfixturevalue("slurm_cluster")
    return backend(ClusterConfig(), log_dir=tmp_path / "logs")


@pytest.mark.parametrize("backend", [pytest.param(SlurmExecutor, marks=pytest.mark.slurm), LocalExecutor])
def test_each_task_runs_its_manifest_line_and_writes_a_record(request, backend, tmp_path):
    executor = _executor(request, backend, tmp_path)
    array = TaskArray.create(tmp_path / "array", f"tasks-{backend.__name__}", _calls())
    array.submit(executor, SCRIPT, stage="eval", max_parallel=2)
    records = Watcher(executor, max_delay=1.0).wait([array], timeout=240)[array.folder]
    assert [records[t]["state"] for t in range(4)] == ["success", "error", "success", "error"]
    assert records[0]["outputs"]["square"] == 9 and records[2]["outputs"]["square"] == 25
    error = records[1]
    assert error["error"] == "ValueError: bad batch 1" and "raise ValueError(message)" in error["traceback"]
    assert "bad batch 1" in open(error["log"]).read()  # the log path points at the task's real log
    lost = records[3]
    assert "without writing a result" in lost["error"] and lost["log"] and os.path.exists(lost["log"])
    # A record is final: reading again gives the same, and the array is not submitted twice.
    assert array.submit(executor, SCRIPT) is None
    assert TaskArray(array.folder).records() == records


@pytest.mark.slurm
def test_one_poll_reads_every_task_of_every_job_and_reattaches(slurm_cluster, tmp_path):
    executor = SlurmExecutor(ClusterConfig(), log_dir=tmp_path / "logs")
    arrays = [TaskArray.create(tmp_path / f"a{i}", f"poll-{i}", [Call("tests.cluster.test_tasks:square", {"x": i})] * 3)
              for i in range(2)]
    for array in arrays:
        array.submit(executor, SCRIPT)
    watcher = Watcher(executor, max_delay=1.0)
    states = executor.task_states([a.job_id for a in arrays])
    assert {f"{a.job_id}_{t}" for a in arrays for t in range(3)} <= set(states)
    # A second driver (fresh objects from disk) re-attaches instead of resubmitting.
    again = [TaskArray(a.folder) for a in arrays]
    assert [a.submit(executor, SCRIPT) for a in again] == [None, None]
    done = watcher.wait(again, timeout=240)
    assert all(r["state"] == "success" for records in done.values() for r in records.values())
    assert [a.job_id for a in again] == [a.job_id for a in arrays]


@pytest.mark.slurm
def test_a_driver_killed_between_sbatch_and_its_record_finds_the_job_by_name(slurm_cluster, tmp_path):
    executor = SlurmExecutor(ClusterConfig(), log_dir=tmp_path / "logs")
    array = TaskArray.create(tmp_path / "a", "orphan-check", [Call("tests.cluster.test_tasks:square", {"x": 2})])
    job = executor.submit(JobSpec("orphan-check", SCRIPT, [str(array.folder)], array=1))
    # As if the driver died after sbatch: the record still says "submitting".
    (array.paths.submission).write_text('{"name": "orphan-check", "state": "submitting"}')
    try:
        assert array.submit(executor, SCRIPT) is None
        assert array.job_id == job.id
        assert Watcher(executor, max_delay=1.0).wait([array], timeout=240)[array.folder][0]["outputs"]["square"] == 4
    finally:
        subprocess.run(["scancel", job.id])


def test_sacct_and_squeue_lines_are_parsed_per_task():
    text = "41_0|COMPLETED\n41_[2-4%2]|PENDING\n41_1|CANCELLED by 0\n42|RUNNING\nnoise\n"
    assert parse_task_states(text) == {"41_0": "COMPLETED", "41_2": "PENDING", "41_3": "PENDING", "41_4": "PENDING",
                                       "41_1": "CANCELLED", "42": "RUNNING"}
    # Exit codes: sacct's `code:signal` as given, squeue's wait status (code << 8, or the signal) decoded.
    assert parse_task_states("7_0|FAILED|3:0\n7_1|FAILED|768|\n7_2|CANCELLED|9|\n7_3|COMPLETED|0|") == {
        "7_0": "FAILED 3:0", "7_1": "FAILED 3:0", "7_2": "CANCELLED 0:9", "7_3": "COMPLETED 0:0"}


@pytest.mark.slurm
def test_a_job_the_controller_forgot_is_not_waited_for_forever(slurm_cluster, tmp_path):
    """An id squeue no longer knows answers {} (not None: the controller did answer); with no accounting the wait
    gives up at its timeout and says so, naming the job."""
    from megatron_demix.cluster.executor import JobFailed

    executor = SlurmExecutor(ClusterConfig(), log_dir=tmp_path)
    assert executor.task_states(["999999"]) == {}
    with pytest.raises(JobFailed, match="SLURM job 999999 still running after 1s"):
        executor.wait_job("999999", timeout=1, max_delay=0.2)


def test_the_runner_refuses_to_run_outside_an_array(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "DEMIX_TASK_ID")}
    out = subprocess.run([os.sys.executable, "-m", "megatron_demix.cluster.tasks", str(tmp_path)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "DEMIX_TASK_ID" in out.stderr
