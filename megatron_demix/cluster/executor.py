"""Run the project's job scripts on SLURM or on this machine, through one interface.

    executor = make_executor(experiment.cluster, log_dir=experiment.paths.logs)
    job = executor.submit(JobSpec("train", "slurm/train_component.sh", [config], array=2, ntasks=2, stage="train"))
    job.wait()            # raises JobFailed naming the failed tasks and their log files

The unit of work is one of the readable bash scripts in `slurm/` (as in submitit's design, one
executor interface with a SLURM and a local backend, but the scripts stay plain files an operator
can read and `sbatch` by hand):
- `SlurmExecutor` submits it with `sbatch --array`, with the resources of the job's stage from the
  `cluster:` section (cluster/config.py; a key the experiment leaves unset is not passed, so the
  script's own #SBATCH line holds). It is the project's one SLURM poller: `task_states` reads every task
  of any number of jobs with one `squeue` call, `final_states` asks `sacct` (where accounting exists)
  about tasks the controller forgot, and `poll_until` is the one back-off loop; `Job.wait` and the
  task arrays' `Watcher` (cluster/tasks.py) both wait through them.
- `LocalExecutor` runs the same script with bash, once per array task and one task at a time,
  setting `DEMIX_TASK_ID` / `DEMIX_NTASKS`; without `SLURM_JOB_ID` the scripts start their ranks
  with torchrun / mpiexec instead of srun.

Child processes (`start_child`, `run_child`) run in their own process group, which Linux sends
SIGTERM when the process that started them dies, even by SIGKILL (PR_SET_PDEATHSIG); inside
`terminate_on_sigterm()` a SIGTERM raises `Terminated`, so `finally` blocks stop their children's
groups before the process ends: a killed driver or task leaves no evaluation running untracked.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from megatron_demix.cluster.config import ClusterConfig
from megatron_demix.runtime.errors import FAILED
from megatron_demix.runtime.progress import Progress

SCRIPTS = Path(__file__).resolve().parent / "slurm"
"""The job scripts, shipped inside the package (a checkout's `slurm/` links here), so that an installed
package submits the same scripts an operator reads."""
log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0
"""While a job runs, a waiting `demix` logs its state and the last line of its log this often."""
T = TypeVar("T")
RUNNING_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class JobFailed(RuntimeError):
    exit_status = FAILED


@dataclass(frozen=True)
class JobSpec:
    name: str
    script: str
    """One of the project's job scripts, e.g. `slurm/train_component.sh` (`script_path`), or a path to another."""
    args: list[str] = field(default_factory=list)
    array: int | None = None
    """Number of array tasks (task i gets SLURM_ARRAY_TASK_ID / DEMIX_TASK_ID = i); None: a plain job."""
    ntasks: int = 1
    """Ranks per task (sbatch --ntasks; torchrun/mpiexec -n locally)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the script (e.g. DEMIX_COMPONENT=base)."""
    stage: str | None = None
    """Pipeline stage (prepare, train, merge, eval, search) whose resources the job gets."""
    max_parallel: int | None = None
    """At most this many array tasks run at once (sbatch --array=0-N%P)."""
    after: tuple[str, ...] = ()
    """Job ids that must end COMPLETED first (sbatch --dependency=afterok); if one fails, SLURM cancels this
    job (--kill-on-invalid-dep). The local executor runs jobs in submission order, so it needs none."""


@dataclass
class Job:
    id: str
    spec: JobSpec
    log_pattern: str
    """Log path with `%a` for the array task id."""
    states: dict[str, str] = field(default_factory=dict)
    _executor: "Executor | None" = None

    def log(self, task: int | str = 0) -> Path:
        return Path(self.log_pattern.replace("%a", str(task)))

    def wait(self, timeout: float | None = None) -> dict[str, str]:
        """Block until every task ended; returns {task id: 'STATE exit'}; raises JobFailed on any failure."""
        self.states = self._executor._wait(self, timeout)
        failed = {task: state for task, state in self.states.items() if not state.startswith("COMPLETED")}
        if failed:
            logs = ", ".join(str(self.log(task.split("_")[-1])) for task in failed)
            raise JobFailed(f"job {self.spec.name} ({self.id}): tasks failed {failed}; logs: {logs}")
        return self.states


def script_path(script: str) -> Path:
    """`slurm/<name>.sh` (or `<name>.sh`) is the package's own script; any other path is taken as given."""
    path = Path(script)
    return SCRIPTS / path.name if path.parent in (Path("."), Path("slurm")) else path


def job_environment(spec: JobSpec) -> dict[str, str]:
    """The script's environment: this one, the spec's, and DEMIX_PYTHON = this interpreter unless set (so an
    installed package's tasks run in the environment that submitted them, wherever the scripts are)."""
    import sys

    return {**os.environ, "DEMIX_PYTHON": os.environ.get("DEMIX_PYTHON", sys.executable), **spec.env}


class Executor:
    """Submit a JobSpec, get a Job; subclasses implement `_submit` and `_wait`. Scripts run in the current
    directory (relative paths in their arguments mean what they mean here)."""

    def __init__(self, cluster: ClusterConfig, log_dir: Path):
        self.cluster = cluster
        self.log_dir = Path(log_dir)

    def submit(self, spec: JobSpec) -> Job:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        job = self._submit(spec)
        job._executor = self
        return job

    def ranks(self, spec: JobSpec) -> int:
        """Processes per task: the stage's nodes x ntasks_per_node when the experiment sets it, else spec.ntasks."""
        return self.cluster.ranks(spec.stage, spec.ntasks) if spec.stage else spec.ntasks

    def _submit(self, spec: JobSpec) -> Job:
        raise NotImplementedError

    def _wait(self, job: Job, timeout: float | None) -> dict[str, str]:
        raise NotImplementedError


class SlurmExecutor(Executor):
    def __init__(self, cluster: ClusterConfig, log_dir: Path):
        super().__init__(cluster, log_dir)
        self._accounting: bool | None = None  # does sacct answer? (None: not asked yet)

    @staticmethod
    def task_states(job_ids: list[str]) -> dict[str, str] | None:
        """{"<job>_<task>" ("<job>" for a plain job): "STATE exit:signal"} of every task of `job_ids`, from one
        `squeue` call; None when the controller did not answer (busy or down: ask again later).

        squeue lists live tasks and, for MinJobAge seconds, finished ones; a task absent from it has left the
        controller's memory (`final_states` may still know it).
        """
        if not job_ids:
            return {}
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids),
                              "-O", "JobArrayID:|,State:|,exit_code:|"], capture_output=True, text=True)
        if out.returncode and "Invalid job id" not in out.stderr:
            log.warning("squeue failed (%s); polling again", out.stderr.strip()[:200])
            return None
        return parse_task_states(out.stdout)

    def final_states(self, job_ids: list[str]) -> dict[str, str]:
        """States of finished tasks the controller forgot, from `sacct` where accounting exists (else {})."""
        if not job_ids or self._accounting is False:
            return {}
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(job_ids)],
                             capture_output=True, text=True)
        self._accounting = out.returncode == 0 and "disabled" not in out.stdout + out.stderr
        return parse_task_states(out.stdout) if self._accounting else {}

    def wait_job(self, job_id: str, timeout: float | None = None, progress=None, max_delay: float = 10.0) -> dict[str, str]:
        """Poll until no task of `job_id` is pending or running; {task: "STATE exit:signal"}. `progress(summary)`
        is called after each poll; past `timeout` seconds the job is cancelled and JobFailed raised."""
        states: dict[str, str] = {}

        def ended() -> dict[str, str] | None:
            nonlocal states
            answer = self.task_states([job_id])
            states = (answer or self.final_states([job_id])) if answer is not None else states
            if states and not any(s.split()[0] in RUNNING_STATES for s in states.values()):
                return states
            if progress is not None:
                counts: dict[str, int] = {}
                for state in states.values():
                    counts[state.split()[0]] = counts.get(state.split()[0], 0) + 1
                progress(", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())))
            return None

        try:
            return poll_until(ended, timeout, max_delay, what=f"SLURM job {job_id}")
        except TimeoutError:
            subprocess.run(["scancel", job_id])
            raise JobFailed(f"SLURM job {job_id} still running after {timeout:.0f}s (cancelled): {states}") from None

    def sbatch_args(self, spec: JobSpec) -> list[str]:
        """sbatch flags for `spec`: its rank count, and its stage's resources where the experiment sets them.

        A resource the experiment leaves unset is not passed, so the script's own #SBATCH line applies.
        """
        r, ntasks = self.cluster.resources(spec.stage), self.ranks(spec)
        # Both counts and the node count: the scripts' #SBATCH lines may set any, and flags override them one by one.
        per_node = r.ntasks_per_node or -(-ntasks // (r.nodes or 1))
        nodes = r.nodes or -(-ntasks // per_node)
        log = f"{self.log_dir}/{spec.name}-%A_%a.out" if spec.array else f"{self.log_dir}/{spec.name}-%j.out"
        args = [f"--job-name=demix-{spec.name}", f"--ntasks={ntasks}", f"--ntasks-per-node={per_node}",
                f"--nodes={nodes}", "--export=ALL", f"--output={log}"]
        if spec.array:
            args.append(f"--array=0-{spec.array - 1}" + (f"%{spec.max_parallel}" if spec.max_parallel else ""))
        optional = {"time": r.time, "cpus-per-task": r.cpus_per_task, "gpus-per-node": r.gpus_per_node, "mem": r.mem,
                    "partition": r.partition, "account": r.account}
        args += [f"--{flag}={value}" for flag, value in optional.items() if value not in (None, 0)]
        if spec.after:
            args += [f"--dependency=afterok:{':'.join(spec.after)}", "--kill-on-invalid-dep=yes"]
        return args + list(r.extra_sbatch_args)

    def _submit(self, spec: JobSpec) -> Job:
        command = ["sbatch", "--parsable", *self.sbatch_args(spec), str(script_path(spec.script)), *spec.args]
        env = job_environment(spec)
        if self.cluster.container_image:  # the scripts pass DEMIX_SRUN_ARGS to srun (Pyxis/enroot)
            env["DEMIX_SRUN_ARGS"] = f"{env.get('DEMIX_SRUN_ARGS', '')} --container-image={self.cluster.container_image}".strip()
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            raise JobFailed(f"sbatch refused job {spec.name}: {out.stderr.strip()} (command: {' '.join(command)})")
        job_id = out.stdout.strip().split(";")[0]
        pattern = f"{self.log_dir}/{spec.name}-{job_id}_%a.out" if spec.array else f"{self.log_dir}/{spec.name}-{job_id}.out"
        return Job(job_id, spec, pattern)

    def _wait(self, job: Job, timeout: float | None) -> dict[str, str]:
        return self.wait_job(job.id, timeout, progress=_job_progress(job))


def _job_progress(job: Job) -> Callable[[str], None]:
    """`report(summary)`: every PROGRESS_SECONDS `job (id): summary | the last line its newest log holds, elapsed`
    (the trainer's rate and ETA are in that line)."""
    progress = Progress(f"{job.spec.name} ({job.id})", every=PROGRESS_SECONDS, log=log.info)

    def newest_line() -> str:
        logs = sorted(glob.glob(job.log_pattern.replace("%a", "*")), key=os.path.getmtime)
        return _last_line(logs[-1]) if logs else ""

    return lambda summary: progress.update(detail=lambda: f"{summary} | {newest_line()}")


def _last_line(path: str) -> str:
    """The last non-empty line of a log (its last progress-bar frame, for tqdm's carriage returns)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 4096))
        lines = [l.strip() for l in f.read().decode(errors="replace").replace("\r", "\n").splitlines() if l.strip()]
    return lines[-1][:200] if lines else ""


def slurm_job_states(job_id: str) -> dict[str, str]:
    """{task: "STATE exit:signal"} of one job now; {} when the controller forgot it or did not answer."""
    return SlurmExecutor.task_states([job_id]) or {}


def parse_task_states(text: str) -> dict[str, str]:
    """`JOBID|STATE[|EXIT]` lines (squeue -r, sacct) into {"<job>_<task>": "STATE exit:signal"}; expands sacct's
    `123_[4-7%2]`. squeue's exit_code is the wait status (code << 8, or the signal), sacct's is `code:signal`."""
    states = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state, code = ([part.strip() for part in line.split("|")] + [""])[:3]
        state = state.split()[0] if state else "UNKNOWN"  # sacct writes "CANCELLED by 0"
        if code.isdigit():
            code = f"0:{int(code) & 0x7F}" if int(code) & 0x7F else f"{int(code) >> 8}:0"
        if code:
            state = f"{state} {code}"
        ranges = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job)
        if ranges:
            for part in ranges.group(2).split(","):
                low, _, high = part.partition("-")
                for task in range(int(low), int(high or low) + 1):
                    states[f"{ranges.group(1)}_{task}"] = state
        else:
            states[job] = state
    return states


def poll_until(poll: Callable[[], T | None], timeout: float | None, max_delay: float, first_delay: float = 0.5,
               what: str = "the jobs") -> T:
    """`poll()` until it answers something other than None: at once, then after `first_delay` s, backing off 1.5x
    to `max_delay` s (a large array's driver must not keep a busy controller busier); TimeoutError past `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = first_delay
    while (answer := poll()) is None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{what} still running after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, max_delay)
    return answer


class LocalExecutor(Executor):
    """Runs the script's tasks here, one after another (a small machine: tasks would fight for cores)."""

    def _submit(self, spec: JobSpec) -> Job:
        job_id = f"local-{os.getpid()}-{time.strftime('%H%M%S')}"
        job = Job(job_id, spec, f"{self.log_dir}/{spec.name}-{job_id}_%a.out")
        for task in range(spec.array or 1):
            env = {**job_environment(spec), "DEMIX_TASK_ID": str(task), "DEMIX_NTASKS": str(self.ranks(spec))}
            env.pop("SLURM_JOB_ID", None)
            progress = _job_progress(job)
            with open(job.log(task), "w") as output:
                process = start_child(["bash", str(script_path(spec.script)), *spec.args], env=env,
                                      stdout=output, stderr=subprocess.STDOUT)
                try:
                    while (code := process.poll()) is None:
                        progress(f"task {task + 1} of {spec.array or 1} running")
                        time.sleep(0.2)
                finally:  # interrupted (SIGTERM, Ctrl-C): the task and its children end with this process
                    stop_child(process)
            job.states[f"{job_id}_{task}"] = f"{'COMPLETED' if code == 0 else 'FAILED'} {code}:0"
        return job

    def _wait(self, job: Job, timeout: float | None) -> dict[str, str]:
        return job.states


# ------------------------------------------------------------------- children that end with their parent

STOP_GRACE_SECONDS = 5.0
"""How long a stopped child's process group has, after SIGTERM, to end before it gets SIGKILL."""
_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    """libc's prctl, looked up here in the parent: between fork and exec the child only calls it (no dlopen,
    whose lock another thread of the parent may have held at the fork)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _libc_prctl()


class Terminated(BaseException):
    """SIGTERM arrived inside `terminate_on_sigterm()`. A BaseException, as KeyboardInterrupt is: no
    `except Exception` may swallow it and carry on working."""


@contextmanager
def terminate_on_sigterm():
    """Within the block, SIGTERM raises Terminated in the main thread (so `finally` blocks stop children);
    the previous handler is restored after. Elsewhere than in the main thread, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when `parent` dies (Linux; elsewhere nothing), and no start at all
    when it died while this child was being forked."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(143)


def start_child(command, **popen_kwargs) -> subprocess.Popen:
    """Popen in a new process group (its leader is the child) that gets SIGTERM if this process dies."""
    return subprocess.Popen(command, start_new_session=True, preexec_fn=partial(_end_with_parent, os.getpid()),
                            **popen_kwargs)


def stop_child(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """End `process`'s whole group if it still runs: SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def run_child(command, timeout: float | None = None, **popen_kwargs) -> int | None:
    """Run `command` (`start_child`) to its end: its exit status, or None when it ran past `timeout` seconds
    and was stopped (its whole group)."""
    process = start_child(command, **popen_kwargs)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        stop_child(process)


def slurm_available() -> bool:
    from megatron_demix.cluster import local_slurm

    return shutil.which("sbatch") is not None and local_slurm.is_running()


def make_executor(cluster: ClusterConfig, log_dir: Path) -> Executor:
    """`cluster.executor`: slurm, local, or auto (SLURM when a cluster answers, else local)."""
    use_slurm = cluster.executor == "slurm" or (cluster.executor == "auto" and slurm_available())
    return (SlurmExecutor if use_slurm else LocalExecutor)(cluster, log_dir)
