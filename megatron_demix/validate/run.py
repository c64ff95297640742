"""`demix validate`: proxy fidelity against reference models trained on the same mixtures.

    result = run_validate(experiment, "work/experiment.yaml", executor, ranks=1)

Steps, each skipped when its output is complete (a re-run after a kill continues):
1. reference mixtures: `validate.references` draws (`validate.sampling`: the search's sampler
   around the prior, or the whole simplex), seeded by `validate.seed`, kept in validate/mixtures.json;
   with `validate.random_search`, that many pool mixtures scored as merged proxies
   (validate/random/) and the best by the search's objective kept in validate/random-best.json;
2. training, one array job through the executor (slurm/train_component.sh --mixture-runs): a
   reference model per mixture (`reference_budget` x a component's iterations), a trained proxy
   per mixture and budget in `proxy_budgets`, a replicate of the first `replicates` references
   (data-order seed training.seed + 1), all from the base, on beta general + (1 - beta) x the
   mixture; models whose save root reached their budget are not trained again;
3. evaluation, the search's own evaluation arrays (search/rounds.py `evaluate_round`): the DeMix
   proxy of each mixture merged in memory from the components, each component alone (the
   interpolation null's inputs), every trained model from its checkpoint, on the same tasks;
   results in validate/evaluations/results/<model id>.json;
4. metrics (validate/fidelity.py) per method and domain and macro, with paired bootstrap
   intervals, the differences demix - other methods and the replicates' noise ceiling; tables,
   raw files and plots (validate/report.py);
5. mixture quality (the paper's Table 3, `validate.mixture_quality`): a model trained like a
   reference on the token prior, on random search's best, and on the search's final mixture once
   the search has one, each ranked among the references per domain and by macro rank (lower is
   better), with a rank band from the replicates' noise.
"""
from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import numpy as np

from megatron_demix.checkpoint.layout import read_tracker
from megatron_demix.cluster.executor import Executor, JobFailed, JobSpec
from megatron_demix.config.base import ConfigError, to_dict
from megatron_demix.runtime.files import atomic_write_json, read_json
from megatron_demix.training.mixture_runs import MixtureRun, write_mixture_runs

log = logging.getLogger(__name__)

REFERENCE = "reference"
DEMIX = "demix"
REPLICATE = "replicate"
"""Prefix of the replicate references (`replicate-v000`: reference v000 again, another data-order seed)."""
COMPONENT = "component"
"""Prefix of the components' own evaluations (`component-code_high`), the interpolation null's inputs."""
INTERPOLATION = "interpolation"
PRIOR_DISTANCE = "prior-distance"
QUALITY = "quality"
"""Prefix of the models trained on the mixtures that Table 3 ranks (`quality-prior`, `quality-search-final`)."""


@dataclass(frozen=True)
class Method:
    """How a mixture's model is obtained: merged from the components, or trained for `budget` x a component's iterations."""

    name: str
    budget: float | None
    """None: merged (no training per mixture)."""


def methods_of(experiment) -> list[Method]:
    settings = experiment.validate
    return [Method(REFERENCE, settings.reference_budget), Method(DEMIX, None),
            *(Method(f"trained-{b:g}x", b) for b in settings.proxy_budgets)]


@dataclass(frozen=True)
class ValidatePaths:
    """Every file of `demix validate`, under <work_dir>/validate/."""

    root: Path

    @property
    def mixtures(self) -> Path:
        return self.root / "mixtures.json"

    @property
    def runs(self) -> Path:
        """The models the latest training array trains (training/mixture_runs.py)."""
        return self.root / "train-runs.jsonl"

    def model(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    @property
    def random(self) -> Path:
        """Random search's merged proxies: a search-round folder like `evaluations`."""
        return self.root / "random"

    @property
    def random_best(self) -> Path:
        return self.root / "random-best.json"

    @property
    def evaluations(self) -> Path:
        """A search-round folder (search/state.py RoundPaths): attempts, results/<method>-<mixture>.json."""
        return self.root / "evaluations"


def component_iters(experiment) -> int:
    from megatron_demix.training.run_options import train_iters_for

    return train_iters_for(experiment, experiment.candidates[0].name)


def method_iters(experiment, method: Method) -> int:
    return max(1, round(method.budget * component_iters(experiment)))


def reference_mixtures(experiment) -> list[dict]:
    """The reference mixtures: sampled once, then read back (a changed setting fails rather than mixing two sets)."""
    from megatron_demix.search.sampler import MixtureSpace, resolve_prior
    from megatron_demix.validate.mixtures import simplex_mixtures

    paths, settings = ValidatePaths(experiment.paths.validate), experiment.validate
    names = [d.name for d in experiment.candidates]
    if paths.mixtures.exists():
        saved = read_json(paths.mixtures, "the drawn reference mixtures", "delete it and run demix validate again (it draws them again)")
        if saved["seed"] != settings.seed or len(saved["mixtures"]) != settings.references or saved["candidates"] != names:
            raise ConfigError(f"{paths.mixtures}: drawn with seed {saved['seed']}, {len(saved['mixtures'])} references,"
                              f" candidates {saved['candidates']}; the experiment now asks for validate.seed {settings.seed},"
                              f" {settings.references} references of {names}: restore those settings or remove {paths.root}")
        return saved["mixtures"]
    rng = np.random.default_rng(settings.seed)
    if settings.sampling == "simplex":
        drawn = simplex_mixtures(len(names), settings.references, max_share=settings.max_share,
                                 min_spacing=settings.min_spacing, rng=rng)
    else:
        space = MixtureSpace.build(resolve_prior(experiment), experiment.search)
        names, drawn = space.names, space.sample(settings.references, rng)
    if len(drawn) < settings.references:
        raise ConfigError(f"validate.references: the sampler gave only {len(drawn)} distinct mixtures of {names};"
                          " lower validate.references or widen search.bounds")
    mixtures = [{"id": f"v{i:03d}", "mixture": dict(zip(names, row.tolist()))} for i, row in enumerate(drawn)]
    atomic_write_json(paths.mixtures, {"seed": settings.seed, "candidates": names, "mixtures": mixtures})
    return mixtures


def quality_ids(experiment) -> list[str]:
    """The mixtures ranked among the references: the token prior, and the search's final mixture once it exists."""
    from megatron_demix.search.state import SearchPaths

    if not experiment.validate.mixture_quality:
        return []
    return (["prior"] + (["random-best"] if experiment.validate.random_search else [])
            + (["search-final"] if SearchPaths.of(experiment).final_mixture.exists() else []))


def quality_mixtures(experiment) -> list[dict]:
    """The mixtures of `quality_ids`, with their shares."""
    from megatron_demix.search.sampler import resolve_prior
    from megatron_demix.search.state import SearchPaths

    shares = {"prior": lambda: resolve_prior(experiment),
              "random-best": lambda: read_json(ValidatePaths(experiment.paths.validate).random_best, "random search's best",
                                               "delete it and run demix validate again")["mixture"],
              "search-final": lambda: read_json(SearchPaths.of(experiment).final_mixture, "the search's final mixture",
                                                  "delete it and resume the search to choose it again")["mixture"]}
    return [{"id": i, "mixture": shares[i]()} for i in quality_ids(experiment)]


def trained_models(experiment, mixtures: list[dict]) -> list[tuple[str, dict, Method]]:
    """(model id, mixture, method) of every model trained: each trained method on each mixture, the replicates,
    then the quality models."""
    methods = {m.name: m for m in methods_of(experiment)}
    models = [(f"{method.name}-{m['id']}", m, method) for method in methods.values() if method.budget is not None
              for m in mixtures]
    models += [(f"{REPLICATE}-{m['id']}", m, methods[REFERENCE]) for m in mixtures[:experiment.validate.replicates]]
    return models + [(f"{QUALITY}-{m['id']}", m, methods[REFERENCE]) for m in quality_mixtures(experiment)]


def training_runs(experiment, mixtures: list[dict]) -> list[MixtureRun]:
    paths = ValidatePaths(experiment.paths.validate)
    replicate_seed = experiment.training.seed + 1
    return [MixtureRun(model_id, m["mixture"], method_iters(experiment, method), str(paths.model(model_id)),
                       seed=replicate_seed if model_id.startswith(f"{REPLICATE}-") else None)
            for model_id, m, method in trained_models(experiment, mixtures)]


def trained(run: MixtureRun) -> bool:
    iteration = read_tracker(Path(run.save))
    return isinstance(iteration, int) and iteration >= run.train_iters


def train_references_and_proxies(experiment, config_path: Path, executor: Executor, ranks: int, runs: list[MixtureRun]) -> None:
    """One array job (a task per model) for the models not yet at their budget; a killed task resumes from its checkpoint."""
    from megatron_demix.pipeline import TRAIN_SCRIPT

    pending = [r for r in runs if not trained(r)]
    log.info("validate: %d of %d models to train", len(pending), len(runs))
    if not pending:
        return
    paths = ValidatePaths(experiment.paths.validate)
    write_mixture_runs(paths.runs, pending)
    executor.submit(JobSpec("validate-train", TRAIN_SCRIPT, [str(config_path), "--mixture-runs", str(paths.runs)],
                            array=len(pending), ntasks=ranks, stage="train")).wait()


def evaluation_entries(experiment, mixtures: list[dict]) -> list[dict]:
    """What the evaluation arrays score: merged proxies first (batches that hold the components), then each
    component alone, then trained models."""
    paths = ValidatePaths(experiment.paths.validate)
    merged = [{"id": f"{DEMIX}-{m['id']}", "mixture": m["mixture"]} for m in mixtures]
    names = [d.name for d in experiment.candidates]
    components = [{"id": f"{COMPONENT}-{name}", "mixture": {n: float(n == name) for n in names},
                   "checkpoint": str(experiment.paths.checkpoint(name))} for name in names]
    return merged + components + [{"id": model_id, "mixture": m["mixture"], "checkpoint": str(paths.model(model_id))}
                                  for model_id, m, _ in trained_models(experiment, mixtures)]


def _evaluate(experiment, config_path: Path, executor: Executor, folder: Path, entries: list[dict]) -> dict[str, dict]:
    """{entry id: evaluation record} of every entry, through the search's evaluation arrays; a failure stops."""
    from megatron_demix.search.rounds import Runner, evaluate_round
    from megatron_demix.search.state import RoundPaths

    outcome = evaluate_round(RoundPaths(folder), entries, Runner.make(executor, config_path, experiment))
    if outcome["failed"]:
        raise JobFailed(f"validate: {len(outcome['failed'])} of {len(entries)} evaluation(s) failed: "
                        + "; ".join(f"{k}: {v[-1].get('error', '?')[:300]} (log: {v[-1].get('log')})"
                                    for k, v in outcome["failed"].items())[:4000]
                        + "; fix the cause and run demix validate again (finished ones are kept)")
    return outcome["results"]


def evaluate_all(experiment, config_path: Path, executor: Executor, mixtures: list[dict]) -> dict[str, dict]:
    """{model id: evaluation record} of every merged proxy, component and trained model."""
    return _evaluate(experiment, config_path, executor, ValidatePaths(experiment.paths.validate).evaluations,
                     evaluation_entries(experiment, mixtures))


def random_search(experiment, config_path: Path, executor: Executor) -> None:
    """Table 3's random search: `validate.random_search` mixtures of the search's pool (seeded apart from the
    references), scored as merged proxies; the best by the search's objective kept for training."""
    from megatron_demix.search.sampler import MixtureSpace, resolve_prior
    from megatron_demix.validate.mixtures import best_by_objective

    paths, settings = ValidatePaths(experiment.paths.validate), experiment.validate
    if not settings.random_search or not settings.mixture_quality or paths.random_best.exists():
        return
    space = MixtureSpace.build(resolve_prior(experiment), experiment.search)
    drawn = space.sample(settings.random_search, np.random.default_rng([settings.seed, 1]))
    entries = [{"id": f"random-r{i:03d}", "mixture": dict(zip(space.names, row.tolist()))} for i, row in enumerate(drawn)]
    results = _evaluate(experiment, config_path, executor, paths.random, entries)
    best = best_by_objective([results[e["id"]] for e in entries], experiment.search)
    log.info("validate: random search's best of %d: %s", len(entries), best["id"])
    atomic_write_json(paths.random_best, {"id": best["id"], "mixture": best["mixture"], "of": len(entries),
                                          "objective": experiment.search.objective})


def training_tokens(experiment, mixtures: list[dict]) -> dict[str, int]:
    """Training tokens each method is charged (the shared base is not counted: every method starts from it):
    merged proxies the components once plus `merged_proxy_tokens` per proxy; the interpolation null the
    components plus that charge per component scored; trained proxies their tokens; the prior distance nothing."""
    tokens_per_iter = experiment.training.global_batch_size * experiment.model.seq_length
    components = len(experiment.candidates) * component_iters(experiment) * tokens_per_iter
    charge = experiment.validate.merged_proxy_tokens
    spent = {}
    for method in methods_of(experiment):
        if method.budget is None:
            spent[method.name] = components + len(mixtures) * charge
        else:
            spent[method.name] = len(mixtures) * method_iters(experiment, method) * tokens_per_iter
    return {**spent, INTERPOLATION: components + len(experiment.candidates) * charge, PRIOR_DISTANCE: 0}


def plan_validate(experiment) -> dict:
    """What `demix validate` trains and evaluates, from the settings alone (nothing drawn or written), and which
    `validate:` settings are defaults: printed before it starts, and by `demix validate --dry-run`."""
    from megatron_demix.pipeline import model_complete

    settings, references = experiment.validate, experiment.validate.references
    models = [{"method": m.name, "models": references, "iterations": method_iters(experiment, m)}
              for m in methods_of(experiment) if m.budget is not None]
    if settings.replicates:
        models.append({"method": f"{REPLICATE} (seed {experiment.training.seed + 1})", "models": settings.replicates,
                       "iterations": method_iters(experiment, Method(REFERENCE, settings.reference_budget))})
    quality = quality_ids(experiment)
    if quality:
        models.append({"method": f"{QUALITY} ({', '.join(quality)})", "models": len(quality),
                       "iterations": method_iters(experiment, Method(REFERENCE, settings.reference_budget))})
    iterations = sum(m["models"] * m["iterations"] for m in models)
    pipeline = ["base", *(d.name for d in experiment.candidates)]
    return {"settings": to_dict(settings),
            "defaults": [f.name for f in fields(settings) if getattr(settings, f.name) == _default(f)],
            "pipeline_models": len(pipeline), "pipeline_to_train": sum(not model_complete(experiment, n) for n in pipeline),
            "models": models, "trainings": sum(m["models"] for m in models), "iterations": iterations,
            "tokens": iterations * experiment.training.global_batch_size * experiment.model.seq_length,
            "components": len(experiment.candidates), "random_search": settings.random_search if quality else 0,
            "evaluations": references + len(experiment.candidates) + sum(m["models"] for m in models)
                           + (settings.random_search if quality else 0)}


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def describe_plan(plan: dict) -> str:
    """`plan_validate`'s plan as the lines `demix validate` prints."""
    settings, defaults = plan["settings"], plan["defaults"]
    shown = ", ".join(f"{k} {v}{' (default)' if k in defaults else ''}" for k, v in settings.items())
    lines = [f"demix validate plan: {shown}",
             f"  first the pipeline's base and components: {plan['pipeline_to_train']} of {plan['pipeline_models']} models"
             " still to train",
             f"  then {plan['trainings']} trainings from the base ({plan['iterations']:,} iterations,"
             f" {plan['tokens']:,} tokens):"]
    lines += [f"    {m['models']:>4} x {m['method']} ({m['iterations']} iterations each)" for m in plan["models"]]
    lines.append(f"  and {plan['evaluations']} evaluations ({settings['references']} merged proxies, the {plan['components']}"
                 " components alone, every trained model"
                 + (f", {plan['random_search']} random-search proxies first" if plan["random_search"] else "") + ")")
    if len(defaults) == len(settings):
        lines.append("  (every validate: setting is its default: set references, proxy_budgets or mixture_quality there to"
                     " train fewer models)")
    return "\n".join(lines)


def run_validate(experiment, config_path: Path, executor: Executor, ranks: int) -> dict:
    """Sample, train, evaluate, measure, report; returns the fidelity summary (also validate/fidelity.json)."""
    from megatron_demix.search.sampler import resolve_prior
    from megatron_demix.validate.fidelity import Evaluations
    from megatron_demix.validate.report import write_report

    mixtures = reference_mixtures(experiment)
    random_search(experiment, config_path, executor)
    quality = quality_mixtures(experiment)
    log.info("validate: %d reference mixtures of %s; mixture quality of: %s", len(mixtures),
             ", ".join(d.name for d in experiment.candidates), ", ".join(m["id"] for m in quality) or "(off)")
    train_references_and_proxies(experiment, config_path, executor, ranks, training_runs(experiment, mixtures))
    records = evaluate_all(experiment, config_path, executor, mixtures)
    evaluations = Evaluations.build(records, mixtures, quality, methods=[m.name for m in methods_of(experiment)],
                                    candidates=[d.name for d in experiment.candidates], prior=resolve_prior(experiment),
                                    plan=_task_plan(experiment))
    return write_report(ValidatePaths(experiment.paths.validate).root, evaluations, experiment.validate,
                        training_tokens(experiment, mixtures))


def _task_plan(experiment):
    from megatron_demix.eval.proxies import task_plan

    return task_plan(experiment)
