"""Evaluate one round's mixtures as array jobs, with retries, re-attachment and progress lines.

    outcome = evaluate_round(round_paths, proposals, runner)      # {"results": {...}, "failed": {...}}

Each attempt is one array job (`cluster/tasks.py`) of batches of `mixtures_per_task` mixtures.
After it ends, mixtures without a result are retried in a new attempt, up to `max_retries` times;
a mixture that failed every time is reported with its errors and log paths. A failure is not final:
each call (each run of the driver, `--resume` included) counts only its own attempts' failures, so
a resumed search evaluates the failed mixtures again (after the evaluation was fixed). Everything is read
back from disk, so a driver killed at any point resumes here: attempts whose job still runs are
re-attached (never resubmitted), finished results are never evaluated again.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from megatron_demix.cluster.executor import Executor
from megatron_demix.cluster.tasks import Call, TaskArray, Watcher
from megatron_demix.runtime.progress import Progress
from megatron_demix.search.config import SearchConfig
from megatron_demix.search.state import RoundPaths

log = logging.getLogger(__name__)
EVALUATE = "megatron_demix.commands.evaluate:evaluate_batch"


@dataclass
class Runner:
    """How rounds are run: the executor, the experiment file the tasks read, and the search settings."""

    executor: Executor
    config_path: str
    search: SearchConfig
    tag: str
    """Short id of the experiment's work dir: makes job names unique across concurrent searches."""

    @classmethod
    def make(cls, executor: Executor, config_path, experiment) -> "Runner":
        tag = hashlib.sha1(str(experiment.work_dir).encode()).hexdigest()[:6]
        return cls(executor, str(config_path), experiment.search, tag)


def failures_by_mixture(round_paths: RoundPaths, results: dict, since: int = 0) -> dict[str, list[dict]]:
    """Per mixture without a result, the error records of the finished tasks that held it (in attempts >= `since`)."""
    failures: dict[str, list[dict]] = {}
    for folder in round_paths.attempts()[since:]:
        array = TaskArray(folder)
        for task, record in array.records().items():
            if record is None or record["state"] == "success":
                continue
            for item in array.calls[task].kwargs["mixtures"]:
                if item["id"] not in results:
                    failures.setdefault(item["id"], []).append(record)
    return failures


def evaluate_round(round_paths: RoundPaths, proposals: list[dict], runner: Runner) -> dict:
    """Run every proposal to a result or to a final failure; returns {"results": {id: result}, "failed": {id: [errors]}}."""
    config = runner.search
    ids = [p["id"] for p in proposals]
    progress = Progress(round_paths.name, total=len(ids), unit="mixtures", every=60.0, on_change=True,
                        done_before=len(round_paths.read_results()), log=log.info)

    def report(done: int, failed: int) -> None:
        progress.update(done, f"{failed} failed, {len(ids) - done - failed} pending")
    watcher = Watcher(runner.executor, max_delay=config.poll_seconds)
    # This call's retry budget starts at the first attempt still running (re-attached) or made from now on.
    attempts = round_paths.attempts()
    since = next((i for i, f in enumerate(attempts) if None in TaskArray(f).records().values()), len(attempts))
    while True:
        results = {k: v for k, v in round_paths.read_results().items() if k in ids}
        failures = failures_by_mixture(round_paths, results, since)
        retryable = [p for p in proposals if p["id"] not in results and len(failures.get(p["id"], [])) <= config.max_retries]
        given_up = {i: f for i, f in failures.items() if i not in results and len(f) > config.max_retries}
        report(len(results), len(given_up))
        unfinished = [TaskArray(f) for f in round_paths.attempts() if None in TaskArray(f).records().values()]
        if unfinished:
            for array in unfinished:  # re-attach (or, if the submission never happened, submit now)
                array.submit(runner.executor, "slurm/eval_proxy.sh", stage="eval", max_parallel=config.max_parallel)

            def show(polled):
                done = len([f for f in round_paths.results.glob("*.json") if f.stem in ids]) if round_paths.results.is_dir() else 0
                report(done, len(given_up))

            watcher.wait(unfinished, progress=show)
            continue
        if not retryable:
            return {"results": results, "failed": given_up}
        attempt = len(round_paths.attempts())
        if attempt and failures:  # new mixtures after a finished attempt (a re-run that adds some) are no retry
            log.warning("%s: retrying %d mixture(s) (attempt %d): %s", round_paths.name, len(retryable), attempt,
                        "; ".join(f"{i}: {f[-1].get('error', '?')[:200]} (log: {f[-1].get('log')})"
                                  for i, f in failures.items() if i not in results)[:2000])
        batches = [retryable[i:i + config.mixtures_per_task] for i in range(0, len(retryable), config.mixtures_per_task)]
        calls = [Call(EVALUATE, {"config": runner.config_path, "results_dir": str(round_paths.results),
                                 "mixtures": [{k: p[k] for k in ("id", "mixture", "checkpoint") if k in p} for p in batch]})
                 for batch in batches]
        array = TaskArray.create(round_paths.attempt(attempt), f"eval-{runner.tag}-{round_paths.name}-a{attempt}", calls)
        array.submit(runner.executor, "slurm/eval_proxy.sh", stage="eval", max_parallel=config.max_parallel)
