"""Score a batch of mixtures: what every executor's evaluation task runs (its entry: commands/evaluate.py).

    score_mixtures(experiment, "work/experiment.yaml", mixtures=[{"id": "r0-0003", "mixture": {...}}],
                   results_dir="work/search/round-0/results")

Writes `results_dir/<id>.json` = {"id", "mixture", "models", "domains", "metrics", "seconds"} per
mixture (with lm-eval also the standard errors, "stderrs" per metric and "domain_stderrs"),
atomically, and skips mixtures that already have one for the same mixture and models (a retried or
re-run task never evaluates a mixture twice). How a mixture is scored (`EVALUATORS`, chosen from the `eval:` section):
- `command`: `eval.command` is a shell template run once per mixture with {mixture} (JSON
  {candidate: ratio}), {output} (where it writes a flat JSON {metric: number}), {workdir}, and
  {checkpoint}: when the template names it, the batch's proxies are merged to disk first, in one
  `python -m megatron_demix.commands.merge --mixtures` on `merge.ranks` MPI ranks that reads each
  component region once for all of them (so the task's disk holds its batch's proxies at once); should
  that batch merge fail, each mixture is merged on its own, so one bad mixture fails alone. An entry
  with its own `checkpoint` (a trained model, `demix validate`) passes that one, never merged nor deleted.
  {hf_checkpoint}: when named, the proxy (merged as for {checkpoint}) or that trained model exported as
  a Hugging Face model directory (hf/export.py, in merge.dtype), for harnesses such as lm-eval's `hf` /
  `vllm` models or OpenCompass. Both are deleted after the evaluation unless `eval.keep_proxies`. Metrics become domain scores through `eval.tasks` (each metric its own
  domain when that is empty).
- `lm_eval`: the built-in evaluation, in this process (eval/proxies.py: ProxyEvaluator): components and
  tasks set up once, each proxy refilled in memory; its record (lm-eval's results, standard errors) is
  the mixture's result file.
A failure of one mixture (non-zero exit, no or unreadable JSON, a NaN, an error, past `eval.timeout`) does
not stop the others; the batch then raises, naming each failed mixture, so the task's record is an error
with its log. Every child runs in its own process group, ended with it on a timeout or when this
task is stopped (cluster/executor.py: run_child); the built-in evaluation is timed by SIGALRM. A stored result is reused only when it is for the
same mixture and the same models (eval/proxies.py: reusable_result); otherwise it is evaluated again.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from megatron_demix.cluster.executor import run_child
from megatron_demix.eval.config import domain_scores
from megatron_demix.eval.proxies import model_identity, reusable_result, write_result
from megatron_demix.merge.mpi import mpiexec_command
from megatron_demix.runtime.errors import FAILED
from megatron_demix.search.objective import check_finite

log = logging.getLogger(__name__)


class EvaluationFailed(RuntimeError):
    exit_status = FAILED


class Deadline:
    """eval.timeout for one evaluation (or a batch of them), shared by the processes it runs one after another."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())


def _run(command: list[str], where: str, deadline: Deadline) -> None:
    """Run with output to this task's log; a non-zero exit, or running past the deadline, is an error naming it."""
    sys.stdout.flush()
    code = run_child(command, timeout=deadline.left())
    if code is None:
        raise EvaluationFailed(f"{where} ran past eval.timeout ({deadline.seconds:g} s) and was ended")
    if code:
        raise EvaluationFailed(f"{where} exited with status {code}")


def _merge(config: str, experiment, what: list[str], where: str, deadline: Deadline) -> None:
    """`python -m megatron_demix.commands.merge --config config *what` on merge.ranks MPI ranks."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    merge = [sys.executable, "-m", "megatron_demix.commands.merge", "--config", config, *what]
    launch = mpiexec_command(str(mpiexec), experiment.merge.ranks) if mpiexec.exists() else []
    _run([*launch, *merge], where, deadline)


def _merge_batch(config: str, experiment, items: list[dict], work_root: Path) -> None:
    """Every item's proxy to `work_root/<id>/checkpoint` from one read of the components (`--mixtures`), within
    eval.timeout per mixture; a failure is logged (each mixture is then merged on its own)."""
    folder, listing = work_root / ".merge", work_root / ".merge-mixtures.jsonl"
    shutil.rmtree(folder, ignore_errors=True)
    listing.write_text("".join(json.dumps({"id": item["id"], "weights": item["mixture"]}) + "\n" for item in items))
    timeout = experiment.eval.timeout
    try:
        _merge(config, experiment, ["--mixtures", str(listing), "--output", str(folder)],
               f"the batch merge of {len(items)} mixtures (python -m megatron_demix.commands.merge --mixtures)",
               Deadline(None if timeout is None else timeout * len(items)))
        for item in items:
            (folder / item["id"]).replace(work_root / item["id"] / "checkpoint")
    except EvaluationFailed as error:
        log.warning("%s; merging each mixture on its own", error)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        listing.unlink(missing_ok=True)


def fill_placeholders(template: str, **paths: Path) -> str:
    """Replace {mixture} {output} {checkpoint} {hf_checkpoint} {workdir} by quoted paths; every other brace stays
    (JSON, awk, ...)."""
    return re.sub(r"\{(" + "|".join(paths) + r")\}", lambda m: shlex.quote(str(paths[m.group(1)])), template)


def evaluate_with_command(config: str, experiment, mixtures: list[dict], work_root: Path, record) -> None:
    """Run `eval.command` once per mixture; `record(id, result or exception)` after each one."""
    from megatron_demix.hf.export import export_checkpoint

    template = experiment.eval.command
    for item in mixtures:
        workdir = work_root / item["id"]
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        (workdir / "mixture.json").write_text(json.dumps(item["mixture"], indent=1))
    needs_proxy = "{checkpoint}" in template or "{hf_checkpoint}" in template
    to_merge = [item for item in mixtures if needs_proxy and not item.get("checkpoint")]
    if len(to_merge) > 1:
        _merge_batch(config, experiment, to_merge, work_root)
    for item in mixtures:
        workdir = work_root / item["id"]
        mixture_file, output = workdir / "mixture.json", workdir / "metrics.json"
        checkpoint, hf_checkpoint = workdir / "checkpoint", workdir / "hf_checkpoint"
        trained = item.get("checkpoint")
        deadline = Deadline(experiment.eval.timeout)
        try:
            if item in to_merge and not checkpoint.exists():
                _merge(config, experiment, ["--mixture", str(mixture_file), "--output", str(checkpoint), "--overwrite"],
                       "the merge (python -m megatron_demix.commands.merge)", deadline)
            if "{hf_checkpoint}" in template:
                # From the merged proxy: it reads one model, not every component (the same values: merge.dtype).
                export_checkpoint(trained or checkpoint, hf_checkpoint)
                if "{checkpoint}" not in template and not trained:
                    shutil.rmtree(checkpoint)
            command = fill_placeholders(template, mixture=mixture_file, output=output, checkpoint=trained or checkpoint,
                                        hf_checkpoint=hf_checkpoint, workdir=workdir)
            _run(["bash", "-c", command], f"eval.command for mixture {item['id']}", deadline)
            if not output.exists():
                raise EvaluationFailed(f"eval.command for mixture {item['id']} exited 0 but wrote no {{output}} file ({output})")
            try:
                raw = json.loads(output.read_text())
            except json.JSONDecodeError as error:
                raise EvaluationFailed(f"{output}: not JSON ({error})") from None
            metrics = check_finite(raw, str(output))
            tasks = experiment.eval.tasks or {name: [name] for name in metrics}
            outcome = {"metrics": metrics, "domains": domain_scores(metrics, tasks, experiment.eval.lower_is_better)}
        except (EvaluationFailed, ValueError, KeyError) as error:
            outcome = error
        finally:
            if not experiment.eval.keep_proxies:
                for proxy in (checkpoint, hf_checkpoint):
                    shutil.rmtree(proxy, ignore_errors=True)
        record(item["id"], outcome)


def evaluate_with_lm_eval(config: str, experiment, mixtures: list[dict], work_root: Path, record) -> None:
    """In this process (eval/proxies.py: ProxyEvaluator): the components and tasks are set up once, then each
    mixture's proxy is refilled in memory and scored. A mixture's failure, or its running past eval.timeout,
    is recorded and the next one goes on."""
    from megatron_demix.eval.proxies import ProxyEvaluator

    with ProxyEvaluator(experiment, mixtures, log=log.info) as evaluator:
        for item in mixtures:
            try:
                with time_limit(experiment.eval.timeout, f"the evaluation of mixture {item['id']}"):
                    result = evaluator.evaluate(item)
                outcome = {**result, "domains": check_finite(result["domains"], f"mixture {item['id']}: domains"),
                           "metrics": check_finite(result["metrics"], f"mixture {item['id']}: metrics")}
            except Exception as error:  # noqa: BLE001  (recorded per mixture; the batch raises after the others)
                log.exception("mixture %s failed", item["id"])
                outcome = error
            record(item["id"], outcome)


@contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise EvaluationFailed in this (main) thread when the block runs past `seconds` (SIGALRM); no limit
    elsewhere than in the main thread, or when `seconds` is None."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise EvaluationFailed(f"{what} ran past eval.timeout ({seconds:g} s) and was ended")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EVALUATORS = {"command": evaluate_with_command, "lm_eval": evaluate_with_lm_eval}


def evaluator_name(eval_config) -> str:
    return "command" if eval_config.command else "lm_eval"


def score_mixtures(experiment, config: str, mixtures: list[dict], results_dir: Path) -> dict:
    """Evaluate the mixtures that have no result yet; returns {"evaluated": [...], "skipped": [...]}; raises on any
    failure. `config` is the experiment's file, which a harness's merge reads again."""
    models = {m["id"]: model_identity(experiment, m) for m in mixtures}
    todo = [m for m in mixtures if reusable_result(results_dir / f"{m['id']}.json", m, models[m["id"]], log.warning) is None]
    skipped = [m["id"] for m in mixtures if m not in todo]
    failed, by_id, last = {}, {m["id"]: m for m in todo}, [time.perf_counter()]

    def record(ident: str, outcome) -> None:
        """Keep each mixture's result the moment it is known: a killed batch keeps the finished ones."""
        now, seconds = time.perf_counter(), time.perf_counter() - last[0]
        last[0] = now
        if isinstance(outcome, Exception):
            failed[ident] = f"{type(outcome).__name__}: {outcome}"
            log.error("mixture %s failed: %s", ident, outcome)
            return
        write_result(results_dir / f"{ident}.json", {"id": ident, "mixture": by_id[ident]["mixture"],
                                                     "models": models[ident], "seconds": round(seconds, 3), **outcome})

    if todo:
        EVALUATORS[evaluator_name(experiment.eval)](config, experiment, todo, results_dir.parent / "work", record)
    if failed:
        raise EvaluationFailed(f"{len(failed)} of {len(todo)} mixture(s) failed:"  # a line each: the driver quotes its own
                               + "".join(f"\n  {k}: {v.splitlines()[0] if v else v}" for k, v in failed.items()))
    return {"evaluated": [m["id"] for m in todo], "skipped": skipped}
