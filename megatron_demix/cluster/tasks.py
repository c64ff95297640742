"""Arrays of tasks that return results: task i runs line i of a manifest and writes a result record.

    array = TaskArray.create(folder, "eval-r0", [Call("pkg.module:function", {"x": 1}), ...])
    array.submit(executor, "slurm/eval_proxy.sh", stage="eval", max_parallel=4)
    records = Watcher(executor).wait([array])[array.folder]     # {task: record}

submitit's design on the project's own scripts: the job script runs
`python -m megatron_demix.cluster.tasks FOLDER`, which reads its line of the manifest (a function
named by `module:function` plus JSON keyword arguments: readable, no pickles), calls it, and
writes `results/<task>.json` atomically: `{"state": "success", "outputs": ...}` or
`{"state": "error", "error": ..., "traceback": ..., "log": ...}`. `TaskPaths` names every file of
an array. One `Watcher` reads the states of every task of every watched array with one call of the
executor's poller (`SlurmExecutor.task_states`: one `squeue`), in the executor's back-off loop
(`poll_until`); a task that left the queue without a record (killed, out of time) gets an error
record naming its scheduler state (from `sacct`, where accounting exists, once squeue has forgotten
the job) and its log. The
submission is recorded (`submission.json`) before and after `sbatch`, so a driver that died can
re-attach to a job still queued or running instead of submitting it again. A task stopped by SIGTERM
(scancel, or the end of the local driver that started it) ends its own child processes first and
writes no record: the watcher records it as lost, and the search evaluates its mixtures again.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from megatron_demix.cluster.executor import (RUNNING_STATES, Executor, Job, JobSpec, SlurmExecutor, Terminated, poll_until,
                                             terminate_on_sigterm)
from megatron_demix.runtime.files import atomic_write_json, atomic_write_text, read_json, read_json_lines

TASKS_FIX = "delete that attempt's folder and resume: its tasks are submitted again"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """What one task runs: `function` is `package.module:name`, called with `kwargs` (JSON values)."""

    function: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskPaths:
    """Every file of one task array, under its folder (submitit's JobPaths)."""

    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.jsonl"

    @property
    def submission(self) -> Path:
        return self.folder / "submission.json"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def result(self, task: int) -> Path:
        return self.folder / "results" / f"{task}.json"


class TaskArray:
    """A manifest of calls, run as one array job; `records()` reads whichever results exist."""

    def __init__(self, folder: Path):
        self.paths = TaskPaths(Path(folder))
        self.folder = self.paths.folder
        self.calls = [Call(**call) for call in read_json_lines(self.paths.manifest, "the calls of a task array", TASKS_FIX)]

    @classmethod
    def create(cls, folder: Path, name: str, calls: list[Call]) -> "TaskArray":
        paths = TaskPaths(Path(folder))
        text = "".join(json.dumps({"function": c.function, "kwargs": c.kwargs}, sort_keys=True) + "\n" for c in calls)
        atomic_write_text(paths.manifest, text)
        atomic_write_json(paths.submission, {"name": name, "state": "created"})
        return cls(folder)

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def submission(self) -> dict:
        return read_json(self.paths.submission, "the task array's submission (job id)", TASKS_FIX)

    @property
    def job_id(self) -> str | None:
        return self.submission.get("job_id")

    def record(self, task: int) -> dict | None:
        """The task's result record (its `log` filled from the job's log pattern when the task could not tell)."""
        try:
            record = read_json(self.paths.result(task), f"task {task}'s result record", "delete it and resume to run that task again")
        except FileNotFoundError:
            return None
        if not record.get("log"):
            record["log"] = self.log(task)
        return record

    def records(self) -> dict[int, dict | None]:
        return {task: self.record(task) for task in range(len(self))}

    def submit(self, executor: Executor, script: str, stage: str | None = None, max_parallel: int | None = None,
               env: dict[str, str] | None = None) -> Job | None:
        """Submit the array once: a recorded job still known to the scheduler is re-attached, not resubmitted."""
        submission = self.submission
        if submission["state"] == "submitting" and isinstance(executor, SlurmExecutor):
            found = job_ids_by_name(f"demix-{submission['name']}")
            if found:  # the driver died between sbatch and recording its answer
                submission.update(state="submitted", job_id=found[0], log_pattern=None)
                atomic_write_json(self.paths.submission, submission)
        if submission["state"] == "submitted":
            return None
        atomic_write_json(self.paths.submission, {**submission, "state": "submitting"})
        spec = JobSpec(submission["name"], script, [str(self.folder)], array=len(self), env=dict(env or {}),
                       stage=stage, max_parallel=max_parallel)
        job = executor.submit(spec)
        atomic_write_json(self.paths.submission, {**submission, "state": "submitted", "job_id": job.id,
                                                  "log_pattern": job.log_pattern, "submitted_at": time.time(),
                                                  "local_states": job.states or None})
        return job

    def log(self, task: int) -> str | None:
        pattern = self.submission.get("log_pattern")
        return pattern.replace("%a", str(task)) if pattern else None


def job_ids_by_name(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%F"], capture_output=True, text=True)
    return sorted(set(out.stdout.split())) if out.returncode == 0 else []


# --------------------------------------------------------------------------------------- the watcher

class Watcher:
    """Polls every task of every watched array with one scheduler call per poll, backing off to `max_delay` s."""

    def __init__(self, executor: Executor, max_delay: float = 10.0, first_delay: float = 0.5):
        self.executor = executor
        self.max_delay = max_delay
        self.first_delay = first_delay

    def poll(self, arrays: list[TaskArray]) -> dict[Path, dict[int, dict | None]]:
        """Each array's {task: record, or None while it is queued or running}; lost tasks get an error record."""
        submitted = [a for a in arrays if a.submission["state"] == "submitted"]
        slurm = self.executor if isinstance(self.executor, SlurmExecutor) else None
        slurm_ids = sorted({a.job_id for a in submitted if not a.job_id.startswith("local-")})
        states = slurm.task_states(slurm_ids) if slurm and slurm_ids else {}
        # Read results only after the scheduler answered: a task writes its record before it leaves the queue.
        polled, lost = {}, []
        for array in arrays:
            records = array.records()
            submission = array.submission
            for task, record in records.items():
                if record is not None or submission["state"] != "submitted" or states is None:
                    continue
                key = f"{submission['job_id']}_{task}"
                state = states.get(key) or (submission.get("local_states") or {}).get(key, "GONE")
                if state.split()[0] not in RUNNING_STATES:
                    lost.append((array, task, key, state))
            polled[array.folder] = records
        gone = sorted({a.job_id for a, _, _, state in lost if state == "GONE"})
        final = slurm.final_states(gone) if slurm else {}
        for array, task, key, state in lost:
            polled[array.folder][task] = write_lost_record(array, task, final.get(key, state))
        return polled

    def wait(self, arrays: list[TaskArray], progress=None, timeout: float | None = None) -> dict[Path, dict[int, dict]]:
        """Poll until every task of every array has a record; `progress(polled)` is called after each poll."""
        def finished() -> dict[Path, dict[int, dict]] | None:
            polled = self.poll(arrays)
            if progress:
                progress(polled)
            return polled if all(r is not None for records in polled.values() for r in records.values()) else None

        return poll_until(finished, timeout, self.max_delay, self.first_delay,
                          what=f"tasks of {', '.join(str(a.folder) for a in arrays)}")


def write_lost_record(array: TaskArray, task: int, state: str) -> dict:
    log_path = array.log(task)
    record = {"state": "error", "task": task, "job_id": array.job_id, "log": log_path,
              "error": f"task {task} of job {array.job_id} ended {state} without writing a result "
                       f"(killed, out of time or memory?); log: {log_path}", "traceback": None}
    atomic_write_json(array.paths.result(task), record)
    return record


# ---------------------------------------------------------------------------------- the task runner

def _log_path() -> str | None:
    """The file this process's stdout goes to (the scheduler's or the local executor's log)."""
    try:
        target = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return target if target.startswith("/") and os.path.isfile(target) else None


def run_task(folder: Path, task: int) -> dict:
    """Run manifest line `task` of the array in `folder`; write and return its result record."""
    array = TaskArray(folder)
    call = array.calls[task]
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    base = {"task": task, "job_id": job_id, "host": socket.gethostname(), "log": _log_path(), "function": call.function}
    start = time.perf_counter()
    try:
        module, _, name = call.function.partition(":")
        outputs = getattr(importlib.import_module(module), name)(**call.kwargs)
        record = {**base, "state": "success", "outputs": outputs}
    except Exception as error:  # recorded, not raised: the driver decides about retries
        record = {**base, "state": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(record["traceback"], file=sys.stderr, flush=True)
    record["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(array.paths.result(task), record)
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m megatron_demix.cluster.tasks FOLDER   (task id from SLURM_ARRAY_TASK_ID or DEMIX_TASK_ID)",
              file=sys.stderr)
        return 2
    task = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("DEMIX_TASK_ID")
    if task is None:
        print("tasks: neither SLURM_ARRAY_TASK_ID nor DEMIX_TASK_ID is set: run this from an array job", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        with terminate_on_sigterm():  # scancel, or the local driver's end: the task's own children end first
            record = run_task(Path(argv[0]), int(task))
    except Terminated:
        print(f"tasks: task {task} stopped by SIGTERM (its child processes were ended); no result written", file=sys.stderr)
        return 143
    return 0 if record["state"] == "success" else 1


if __name__ == "__main__":
    from megatron_demix.runtime.errors import exit_process

    exit_process(main())
