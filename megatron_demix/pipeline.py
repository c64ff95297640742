"""The DeMix pipeline as jobs: what `demix train`, `demix run` and `demix status` do.

    prepare -> base -> components (array) -> search (rounds of evaluation arrays) -> final mixture

(the base is imported instead of trained when the experiment starts from a Hugging Face model, `model.from_hf`).

Every stage submits the project's scripts in `slurm/` through one executor (cluster/executor.py):
sbatch on a SLURM cluster, or the same scripts run here when there is none. Each job names its
stage (JobSpec.stage), so it gets that stage's resources from the experiment's `cluster.stages`.
Three ways to run it:
- `run_pipeline`: stage after stage from this process, waiting for each job; a stage whose output
  is complete is skipped, so a re-run after a kill continues where it stopped;
- `submit_pipeline`: the whole chain submitted at once with `afterok` dependencies (SLURM only);
  the search driver runs as a job (slurm/search.sh); `pipeline_status` follows it;
- `plan_pipeline`: the jobs either of them would submit, their resources and dependencies, and an
  estimate of the compute (`demix run --dry-run`).

Before anything is written, `claim_work_dir` makes a run the only one in its work dir (a lock, and
no submitted chain still queued there), and refuses to reuse stale work: each stage's settings are
recorded in <work_dir>/stages.json, and a stage whose outputs were made with other settings is
redone only when asked (`--rerun-from STAGE`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from megatron_demix.checkpoint.layout import read_tracker
from megatron_demix.cluster.executor import RUNNING_STATES, Executor, JobFailed, JobSpec, SlurmExecutor, slurm_job_states
from megatron_demix.config.base import ConfigError, to_dict
from megatron_demix.runtime.files import atomic_write_json, read_json
from megatron_demix.runtime.lock import WorkDirBusy, hold_work_dir
from megatron_demix.search.state import RESUMABLE_KEYS
from megatron_demix.training.run_options import train_iters_for

JOBS_FIX = ("check its jobs with squeue and cancel any still queued (scancel), then delete the file; demix status"
            " and demix run --submit then see no chain")
FINAL_FIX = "delete it and run demix run again: the search resumes and chooses the mixture again"

log = logging.getLogger(__name__)

TRAIN_SCRIPT = "slurm/train_component.sh"

ASSUMED_GPU_FLOPS = 989e12
"""Peak dense bf16 FLOP/s of one H100 SXM, the GPU the compute estimate assumes."""
ASSUMED_MFU = 0.40
"""Model FLOPs utilisation the estimate assumes (Megatron-LM reaches about 40% on dense models of this size)."""


def prepare_spec(config_path: Path) -> JobSpec:
    return JobSpec("prepare", "slurm/prepare.sh", [str(config_path)], stage="prepare")


def base_spec(experiment, config_path: Path, ranks: int) -> JobSpec:
    if experiment.model.from_hf:
        # Imported, not trained (hf/from_hf.py): one CPU process holding the model once, as prepare's jobs do.
        return JobSpec("import-base", TRAIN_SCRIPT, [str(config_path)], env={"DEMIX_COMPONENT": "base"}, stage="prepare")
    return JobSpec("train-base", TRAIN_SCRIPT, [str(config_path)], ntasks=ranks, env={"DEMIX_COMPONENT": "base"}, stage="train")


def components_spec(experiment, config_path: Path, ranks: int) -> JobSpec:
    return JobSpec("train", TRAIN_SCRIPT, [str(config_path)], array=len(experiment.candidates), ntasks=ranks, stage="train")


def search_spec(config_path: Path) -> JobSpec:
    # The driver submits its evaluation arrays to the same cluster; --resume makes a requeued driver continue.
    return JobSpec("search", "slurm/search.sh", [str(config_path), "--resume", "--executor", "slurm"], stage="search")


def prepare_data(config_path: Path, executor: Executor) -> None:
    """Tokenizer and indexed datasets as a job (at paper scale hours of CPU work, not the login node's).

    Always submitted: `demix prepare` itself skips datasets whose sources and settings are unchanged,
    and only it can tell (it fingerprints the sources)."""
    executor.submit(prepare_spec(config_path)).wait()


def model_complete(experiment, name: str) -> bool:
    """Has `base` or a component reached its iteration budget (its save root's tracker says so)?
    An imported base (`model.from_hf`) is complete once its tracker exists: the import writes it last."""
    iteration = read_tracker(experiment.paths.checkpoint(name))
    if name == "base" and experiment.model.from_hf:
        return iteration is not None
    return isinstance(iteration, int) and iteration >= train_iters_for(experiment, name)


def train_models(experiment, config_path: Path, executor: Executor, ranks: int) -> None:
    """The base (general data), then one component per candidate as an array job; finished models are skipped.
    When only some are unfinished (a candidate added to the experiment, a task that failed) only those are
    submitted, one job each: the finished ones' checkpoints are not touched."""
    if not model_complete(experiment, "base"):
        executor.submit(base_spec(experiment, config_path, ranks)).wait()
    missing = [d.name for d in experiment.candidates if not model_complete(experiment, d.name)]
    if len(missing) == len(experiment.candidates):
        executor.submit(components_spec(experiment, config_path, ranks)).wait()
    elif missing:
        jobs = [executor.submit(JobSpec(f"train-{name}", TRAIN_SCRIPT, [str(config_path)], ntasks=ranks,
                                        env={"DEMIX_COMPONENT": name}, stage="train")) for name in missing]
        for job in jobs:
            job.wait()


@dataclass
class StageClock:
    """Wall time per stage, printed as the pipeline goes and returned at the end."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        log.info("stage %s done in %.1fs", name, self.seconds[name])


def run_pipeline(experiment, config_path: Path, executor: Executor, ranks: int, more_rounds: int = 0,
                 round_size: int | None = None) -> dict:
    """prepare -> base -> components -> search, each stage skipped when complete; returns the final answer.
    A finished search goes on when `more_rounds` are asked for or candidates were added (search/driver.py)."""
    from megatron_demix.search.driver import run_search

    clock = StageClock()
    with clock.stage("prepare"):
        prepare_data(config_path, executor)
    with clock.stage("train"):
        train_models(experiment, config_path, executor, ranks)
    with clock.stage("search"):
        final = experiment.paths.search / "final_mixture.json"
        answer = read_json(final, "the search's final mixture", FINAL_FIX) if final.exists() else None
        if answer is None or more_rounds or set(answer["mixture"]) != {d.name for d in experiment.candidates}:
            answer = run_search(experiment, config_path, executor, resume=True, more_rounds=more_rounds, round_size=round_size)
    return {"answer": answer, "seconds": clock.seconds, "report": str(final.parent / "report")}


def chain_specs(experiment, config_path: Path, ranks: int) -> list[JobSpec]:
    """The jobs of the whole pipeline, each depending on the one before (ids filled in at submission)."""
    return [prepare_spec(config_path), base_spec(experiment, config_path, ranks),
            components_spec(experiment, config_path, ranks), search_spec(config_path)]


def submit_pipeline(experiment, config_path: Path, executor: Executor, ranks: int) -> list[dict]:
    """Submit every stage at once, chained with afterok; records the job ids in <work_dir>/jobs.json."""
    if not isinstance(executor, SlurmExecutor):
        raise ConfigError("--submit needs SLURM (cluster.executor: slurm, or --executor slurm, with sbatch on PATH):"
                          " without it run `demix run` in the foreground")
    submitted, previous = [], None
    for spec in chain_specs(experiment, config_path, ranks):
        if previous is not None:
            spec = JobSpec(**{**spec.__dict__, "after": (previous,)})
        job = executor.submit(spec)
        submitted.append({"name": spec.name, "id": job.id, "after": list(spec.after), "log": job.log_pattern})
        previous = job.id
    atomic_write_json(experiment.paths.jobs, {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": submitted})
    return submitted


def plan_pipeline(experiment, config_path: Path, executor: Executor, ranks: int) -> dict:
    """What `demix run --submit` would submit (sbatch flags, dependencies) and the compute it would spend."""
    slurm = SlurmExecutor(executor.cluster, executor.log_dir)
    jobs = []
    for i, spec in enumerate(chain_specs(experiment, config_path, ranks)):
        jobs.append({"name": spec.name, "script": spec.script, "args": spec.args, "env": spec.env,
                     "after": [jobs[i - 1]["name"]] if i else [], "sbatch": slurm.sbatch_args(spec)})
    search = experiment.search
    evaluations = sum(search.sizes) + (1 if search.evaluate_final else 0)
    eval_tasks = -(-evaluations // search.mixtures_per_task)
    jobs.append({"name": "eval (submitted by the search driver, one array per round)", "script": "slurm/eval_proxy.sh",
                 "args": [], "env": {}, "after": ["search"], "tasks": eval_tasks,
                 "sbatch": slurm.sbatch_args(JobSpec("eval", "slurm/eval_proxy.sh", array=eval_tasks, stage="eval"))})
    return {"jobs": jobs, "compute": compute_estimate(experiment, evaluations, eval_tasks)}


def _hours(time_limit: str | None) -> float | None:
    """A SLURM time limit in hours: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S."""
    if not time_limit:
        return None
    days, _, clock = time_limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    else:
        h, m, s = 0, parts[0], parts[1] if len(parts) == 2 else 0
    return int(days or 0) * 24 + h + m / 60 + s / 3600


def compute_estimate(experiment, evaluations: int, eval_tasks: int) -> dict:
    """GPU-hours of training from the model's FLOPs per token, and every stage's allocation ceiling."""
    from megatron_demix.model.flops import parameter_count, training_flops_per_token

    vocab = experiment.tokenizer.vocab_size if experiment.tokenizer.path is None else None
    tokens_per_iter = experiment.training.global_batch_size * experiment.model.seq_length
    train_tokens = {name: train_iters_for(experiment, name) * tokens_per_iter
                    for name in ["base", *(d.name for d in experiment.candidates)]}
    vocab = vocab or 151_936  # a user tokenizer's size is known only once loaded; Qwen3's is the paper's
    flops = sum(train_tokens.values()) * training_flops_per_token(experiment.model, vocab)
    cluster = experiment.cluster

    def ceiling(stage: str, jobs: int) -> float | None:
        r = cluster.resources(stage)
        hours = _hours(r.time)
        return None if hours is None else jobs * (r.nodes or 1) * (r.gpus_per_node or 0) * hours

    return {
        "parameters": parameter_count(experiment.model, vocab),
        "train_tokens": train_tokens,
        "train_flops": flops,
        "train_gpu_hours": flops / (ASSUMED_GPU_FLOPS * ASSUMED_MFU) / 3600,
        "assumption": f"{ASSUMED_GPU_FLOPS / 1e12:.0f} TFLOP/s per GPU at {ASSUMED_MFU:.0%} MFU (H100 bf16)",
        "evaluations": evaluations,
        "allocation_ceiling_gpu_hours": {"train": ceiling("train", 1 + len(experiment.candidates)),
                                         "eval": ceiling("eval", eval_tasks)},
    }


def pipeline_status(experiment) -> dict:
    """Where the pipeline stands: each stage from its outputs, the submitted jobs' states, the search's rounds."""
    from megatron_demix.search.driver import search_status

    paths = experiment.paths
    models = {}
    for name in ["base", *(d.name for d in experiment.candidates)]:
        iteration = read_tracker(paths.checkpoint(name))
        models[name] = {"iteration": iteration, "of": train_iters_for(experiment, name)}
    jobs = read_json(experiment.paths.jobs, "the jobs of the submitted chain", JOBS_FIX)["jobs"] if experiment.paths.jobs.exists() \
        else []
    for job in jobs:
        try:
            job["states"] = slurm_job_states(job["id"])
        except (OSError, JobFailed):
            job["states"] = {}
    search = search_status(experiment) if paths.token_prior.exists() or experiment.search.prior else None
    if search is None or not models["base"]["iteration"]:
        stage = "prepare" if not paths.token_prior.exists() else "train"
    elif not all(model_complete(experiment, d.name) for d in experiment.candidates):
        stage = "train"
    else:
        stage = "done" if search["final"] else "search"
    return {"stage": stage, "prepared": paths.token_prior.exists(), "models": models, "jobs": jobs, "search": search}


# --- One run per work dir, and no stale work reused -------------------------------------------------------------

STAGES = ("base", "components", "search", "validate")
"""The stages whose outputs record their settings (prepare redoes by itself whatever its settings change)."""
MADE_FROM = {"base": (), "components": ("base",), "search": ("base", "components"), "validate": ("base", "components")}
"""The stages each one reads: a command that runs a stage checks those too."""
COMMAND_STAGES = {"demix train": "components", "demix run": "search", "demix validate": "validate"}
"""The last stage each command makes (the `through` of `claim_work_dir`); tools/search/run.py makes the search too."""
CHANGE_NOTHING = {
    "prepare": {"workers", "chunk_documents"},
    "model": {"transformer_impl"},
    "validate": {"bootstrap_samples", "merged_proxy_tokens"},
}
"""Settings that change how a stage runs, not what it makes (Megatron's layers or TE's give the same model; the
reports are rebuilt on every run)."""
BASE_TRAINING = ("global_batch_size", "lr", "min_lr", "lr_warmup_iters", "weight_decay", "adam_beta1", "adam_beta2",
                 "clip_grad", "base_train_iters", "seed")
"""The `training:` settings that change the base (parallel layout, intervals, precision and the throughput flags do
not: a checkpoint reshards to any TP/PP)."""
COMPONENT_TRAINING = BASE_TRAINING + ("train_iters", "train_tokens", "beta")
"""... and those that change the components (trained from the base)."""
SCORING_KEYS = ("tasks", "metrics", "lower_is_better", "include_path", "command", "max_length", "limit", "dtype",
                "builtin_questions", "builtin_documents")
"""The `eval:` settings that change a score (the others, batch size or caching, do not)."""


def stage_settings(experiment) -> dict[str, dict]:
    """What each stage's outputs are made from, section by section; a stage holds the settings of the stages it is
    made from too, so a change reaches everything made after it."""
    def section(name: str, drop=(), keep=None) -> dict:
        return {k: v for k, v in to_dict(getattr(experiment, name)).items() if k not in drop and (keep is None or k in keep)}

    base = {"datasets": [to_dict(d) for d in experiment.datasets], "tokenizer": section("tokenizer"),
            "prepare": section("prepare", CHANGE_NOTHING["prepare"]), "model": section("model", CHANGE_NOTHING["model"]),
            "training": section("training", keep=BASE_TRAINING)}
    components = {**base, "training": section("training", keep=COMPONENT_TRAINING)}
    scoring = section("eval", keep=SCORING_KEYS)
    settings = {"base": base, "components": components,
                "search": {**components, "eval": scoring, "search": section("search", RESUMABLE_KEYS)},
                # validate's references sample the candidates' simplex: unlike the search, it cannot take one more later
                "validate": {**components, "candidates": [d.name for d in experiment.candidates], "eval": scoring,
                             "validate": section("validate", CHANGE_NOTHING["validate"])}}
    return json.loads(json.dumps(settings))  # as stages.json holds them (tuples become lists)


def stage_outputs(experiment, stage: str) -> list:
    """The files and folders a stage has made so far (what --rerun-from removes)."""
    paths = experiment.paths
    if stage == "base":
        found = [paths.checkpoint("base")]
    elif stage == "components":
        found = [p for p in paths.checkpoints.glob("*") if p.name != "base"] + [paths.proxies]
    else:
        found = [paths.search if stage == "search" else paths.validate]
    return [p for p in found if p.exists()]


def _by_name(value):
    """A list of named settings (the datasets) as {name: settings}, else the value as it is."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return {v["name"]: v for v in value}
    return value


def changes(old, new, where: str = "") -> list[str]:
    """`key: old -> new` for every setting that differs; keys only one side has (a field added or removed by a newer
    release) are not changes, nor is a dataset only one side lists: a candidate added to an experiment leaves what
    was made from the others valid (the search refuses a removed one: search/state.py)."""
    old, new = _by_name(old), _by_name(new)
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in old if k in new for c in changes(old[k], new[k], f"{where}.{k}" if where else k)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and any(isinstance(v, dict) for v in old):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in changes(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {json.dumps(old)} -> {json.dumps(new)}"]


def active_chain(experiment) -> list[str]:
    """`name id` of each job of the chain `demix run --submit` recorded in jobs.json that SLURM still has queued or
    running, except this process's own job (the chain's search driver)."""
    if not experiment.paths.jobs.exists():
        return []
    own = os.environ.get("SLURM_JOB_ID")
    active = []
    for job in read_json(experiment.paths.jobs, "the jobs of the submitted chain", JOBS_FIX)["jobs"]:
        try:
            states = {} if job["id"] == own else slurm_job_states(job["id"])
        except OSError:  # no scontrol here: the chain, if any, is on another cluster
            log.warning("%s: cannot ask SLURM about job %s (no scontrol here)", experiment.paths.jobs, job["id"])
            continue
        if any(s.split()[0] in RUNNING_STATES for s in states.values()):
            active.append(f"{job['name']} {job['id']}")
    return active


def claim_work_dir(experiment, through: str, rerun_from: str | None = None) -> None:
    """Make this process the only run in the work dir, before it writes anything there:
    1. lock it (runtime/lock.py), or fail naming the process that holds it;
    2. fail while a chain submitted by `demix run --submit` has jobs queued or running there;
    3. fail when a stage this command runs or reads (`through` and what it is made from) has outputs made with other
       settings, naming each change, unless `rerun_from` redoes that stage: then remove the outputs of `rerun_from`
       and of everything made from it;
    4. record the settings of those stages in <work_dir>/stages.json."""
    paths = experiment.paths
    stages = [*MADE_FROM[through], through]
    if rerun_from is not None and rerun_from not in stages:
        raise ConfigError(f"--rerun-from {rerun_from}: this command makes {', '.join(stages)}; choose one of them")
    hold_work_dir(paths.root)
    running = active_chain(experiment)
    if running:
        raise WorkDirBusy(f"{paths.root}: the chain `demix run --submit` started there is still queued or running"
                          f" ({', '.join(running)}): wait for it (demix status), or scancel those jobs, or use another"
                          " work_dir (--work-dir)")
    redone = [s for s in STAGES if rerun_from is not None and (s == rerun_from or rerun_from in MADE_FROM[s])]
    recorded = read_json(paths.stages, "the settings each stage was made from",
                         "delete it to record the current settings (the stages already made are then kept as they are)") if paths.stages.exists() else {}
    current = stage_settings(experiment)
    for stage in stages:
        changed = changes(recorded.get(stage, {}), current[stage])
        outputs = stage_outputs(experiment, stage)
        if changed and outputs and stage not in redone:
            after = [s for s in STAGES if stage in MADE_FROM[s]]
            commands = [c for c, last in COMMAND_STAGES.items() if stage in (last, *MADE_FROM[last])]
            raise ConfigError(
                f"{paths.root}: the {stage} stage's outputs ({', '.join(str(p) for p in outputs)}) were made with other"
                f" settings: {'; '.join(changed)}. Restore those settings, or use another work_dir (--work-dir), or pass"
                f" --rerun-from {stage} to {' or '.join(f'`{c}`' for c in commands)}: it removes them"
                + (f" and what is made from them ({', '.join(after)})" if after else "") + " and makes them again")
    for stage in redone:
        for output in stage_outputs(experiment, stage):
            log.warning("--rerun-from %s: removing %s", rerun_from, output)
            shutil.rmtree(output)
    if any(recorded.get(s) != current[s] for s in stages):
        atomic_write_json(paths.stages, {**recorded, **{s: current[s] for s in stages}})
