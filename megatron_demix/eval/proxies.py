"""Many proxies per process: load the components once, then per mixture refill the model and evaluate.

    results = evaluate_mixtures(experiment, [{"id": "m0", "mixture": {"code": 0.3, "math": 0.7}}], "evals/")

An entry with a `checkpoint` (a save root, an iter_* or torch_dist directory) evaluates that trained
model instead of a merge (`demix validate` scores its reference models through the same path).

For each mixture the model's parameters are recomputed in place, sum_i w_i * Theta_i in fp32
(the merge library's arithmetic, over every tensor at once: eval/refill.py), cast to merge.dtype,
then to the model's; the proxy never touches the disk. When the components do not fit in memory
together (`eval.cache_components: auto` compares their size with half the available memory), each
mixture is merged-on-load from disk instead, chunk by chunk; the log says which, with the numbers.

Each result is written atomically to `<output_dir>/<id>.json`:
    {"id", "mixture", "domains": {domain: score, higher is better}, "metrics": {task: value},
     "metric_names": {task: metric}, "lm_eval": {"version", "task_versions", "results"}, "seconds"}
with "models", what the proxy was made from (`model_identity`). A stored result is reused, so a killed
job re-run evaluates only the rest, but only when it is for the same mixture and the same models: a
manifest that gives an id another mixture, or components retrained since, evaluate it again (the log
names the stored mixture and the new one).
Everything is checked before the first evaluation: ids, mixtures (over the experiment's
candidates, summing to 1) and task names.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from megatron_demix.eval.config import EvalInputError, domain_scores, domain_stderrs
from megatron_demix.runtime.files import atomic_write_json, remove_stale_temporaries

GB = 1e9
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class TaskPlan:
    """Which tasks run, how each is scored, and how they form domains."""

    domains: dict[str, list[str]]
    metric_names: dict[str, str]
    """Task -> metric set by the config (or the built-in tasks); others: the task's first metric."""
    lower_is_better: tuple[str, ...]
    include_paths: tuple[str, ...]

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t for names in self.domains.values() for t in names))


def task_plan(experiment, tasks=None) -> TaskPlan:
    """The tasks to run: `tasks` (a list: each task its own domain; a dict: domain -> tasks), else
    `eval.tasks`, else the built-in tasks of every dataset (which `demix prepare` writes)."""
    from megatron_demix.data.builtin_tasks import default_tasks, tasks_dir

    settings = experiment.eval
    builtin, builtin_metrics = default_tasks(experiment)
    if isinstance(tasks, (list, tuple)):
        domains = {t: [t] for t in tasks}
    else:
        domains = dict(tasks or settings.tasks or builtin)
    include = [str(tasks_dir(experiment))] if tasks_dir(experiment).is_dir() else []
    if settings.include_path:
        include.append(str(Path(settings.include_path).expanduser()))
    if not domains:
        raise EvalInputError(f"{tasks_dir(experiment)}: no built-in task could be made from the held-out documents;"
                             " name lm-eval tasks in eval.tasks")
    uses_builtin = any(t in builtin_metrics for names in domains.values() for t in names)
    if uses_builtin and not tasks_dir(experiment).is_dir():
        raise EvalInputError(f"{tasks_dir(experiment)}: the built-in tasks are missing; run `demix prepare --config <experiment.yaml>`")
    return TaskPlan(domains, {**builtin_metrics, **settings.metrics}, tuple(settings.lower_is_better), tuple(include))


def task_manager(plan: TaskPlan):
    """lm-eval's TaskManager, checked to know every task of `plan` (or an EvalInputError naming the unknown).

    Indexing lm-eval's own ~15k task YAMLs takes tens of seconds on a small machine, so when the
    include paths (the built-in tasks, eval.include_path) hold every task, they are indexed alone.
    """
    from lm_eval.tasks import TaskManager

    include = list(plan.include_paths) or None
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if set(plan.tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=include)
    known = set(manager.all_tasks)
    for domain, names in plan.domains.items():
        unknown = [t for t in names if t not in known]
        if unknown:
            raise EvalInputError(
                f"eval.tasks.{domain}: unknown lm-eval task(s) {', '.join(unknown)}; check the name with"
                f" `demix-lm-eval ls tasks`, or put its YAML in eval.include_path"
                f" (searched: {', '.join(plan.include_paths) or 'lm-eval only'})"
            )
    return manager


def check_mixtures(experiment, mixtures: list[dict], where: Callable[[int], str] = lambda i: f"mixtures[{i}]") -> None:
    """Every entry {"id": str, "mixture": {candidate: weight}} over this experiment's candidates, summing to 1."""
    names = [d.name for d in experiment.candidates]
    seen = set()
    for i, entry in enumerate(mixtures):
        if not isinstance(entry, dict) or not isinstance(entry.get("mixture"), dict) or "id" not in entry:
            raise EvalInputError(f"{where(i)}: expected {{\"id\": \"...\", \"mixture\": {{candidate: weight}}}}")
        ident = entry["id"]
        if not isinstance(ident, str) or not ID_PATTERN.fullmatch(ident):
            raise EvalInputError(f"{where(i)}: id {ident!r} must be a string of letters, digits, '.', '_' or '-' (it names the result file)")
        if ident in seen:
            raise EvalInputError(f"{where(i)}: id {ident!r} appears twice")
        seen.add(ident)
        mixture = entry["mixture"]
        missing, unknown = [n for n in names if n not in mixture], sorted(set(mixture) - set(names))
        bad = [k for k, w in mixture.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0]
        if missing or unknown or bad:
            raise EvalInputError(
                f"{where(i)} (id {ident}): not a mixture of experiment {experiment.name!r}, whose candidates are"
                f" {', '.join(names)}" + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; weights must be numbers >= 0: {', '.join(bad)}" if bad else "")
            )
        total = math.fsum(mixture.values())
        if abs(total - 1.0) > 1e-6:
            raise EvalInputError(f"{where(i)} (id {ident}): weights sum to {total:.6g}, not 1")


def primary_metric(results: dict, task: str, wanted: str | None) -> tuple[str, float, bool]:
    """(metric name, value, higher is better) of one task in lm-eval's results dict."""
    values = results["results"].get(task)
    if values is None:
        raise KeyError(f"lm-eval returned no results for task {task!r}")
    keys = [k for k in values if "," in k and "_stderr" not in k]
    if wanted:
        key = wanted if "," in wanted else next((k for k in keys if k.split(",")[0] == wanted), None)
        if key is None or key not in values:
            raise EvalInputError(f"eval.metrics.{task}: {wanted!r} is not a metric of task {task} (it has {', '.join(keys)})")
    else:
        key = keys[0]
    name = key.split(",")[0]
    higher = results.get("higher_is_better", {}).get(task, {}).get(name, True)
    return key, float(values[key]), bool(higher)


def result_record(ident: str, mixture: dict, results: dict, plan: TaskPlan, seconds: float) -> dict:
    import lm_eval

    metrics, names, stderrs, lower = {}, {}, {}, []
    for task in plan.tasks:
        key, value, higher = primary_metric(results, task, plan.metric_names.get(task))
        metrics[task], names[task] = value, key
        stderr = results["results"][task].get(key.replace(",", "_stderr,", 1))
        if isinstance(stderr, (int, float)) and math.isfinite(stderr):
            stderrs[task] = float(stderr)
        if not higher or task in plan.lower_is_better or key.split(",")[0] in plan.lower_is_better:
            lower.append(task)
    return {
        "id": ident, "mixture": mixture, "domains": domain_scores(metrics, plan.domains, lower),
        "domain_stderrs": domain_stderrs(stderrs, plan.domains),
        "metrics": metrics, "metric_names": names, "stderrs": stderrs,
        "lm_eval": {"version": lm_eval.__version__, "task_versions": results.get("versions", {}),
                    "results": results["results"]},
        "seconds": round(seconds, 3),
    }


def model_identity(experiment, entry: dict) -> dict[str, str]:
    """What an entry's result is computed from besides its mixture: the trained checkpoint it names, else the
    base and every component checkpoint, each as `<directory>@<mtime ns>` of the iteration its save root's
    tracker points at (a model retrained in place is another model; a missing one is its path alone)."""
    if entry.get("checkpoint"):
        return {"checkpoint": _stamp(Path(entry["checkpoint"]))}
    paths = experiment.paths
    return {name: _stamp(paths.checkpoint(name)) for name in ["base", *(d.name for d in experiment.candidates)]}


def _stamp(path: Path) -> str:
    from megatron_demix.checkpoint.layout import iteration_dir, read_tracker

    iteration = read_tracker(path) if path.is_dir() else None
    target = iteration_dir(path, iteration) if iteration is not None else path
    try:
        return f"{target}@{target.stat().st_mtime_ns}"
    except OSError:
        return str(target)


def reusable_result(path: Path, entry: dict, models: dict, log: Callable[[str], None]) -> dict | None:
    """The result stored at `path` when it is for `entry`'s mixture and `models`; None when there is none or it
    is for something else (then the log names both: the entry is evaluated again and its result replaces it).
    A result written before results recorded their models is matched on its mixture alone."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        log(f"[eval] {path}: unreadable ({error}); evaluating {entry['id']} again")
        return None
    mixture = stored.get("mixture") if isinstance(stored, dict) else None
    if not _same_mixture(mixture, entry["mixture"]):
        log(f"[eval] {path}: stored for mixture {json.dumps(mixture)}, but {entry['id']} is now"
            f" {json.dumps(entry['mixture'])}: evaluating it again")
        return None
    before = stored.get("models", models)
    if before != models:
        changed = sorted(k for k in set(models) | set(before) if models.get(k) != before.get(k))
        log(f"[eval] {path}: made from other models ({'; '.join(f'{k}: {before.get(k)} -> {models.get(k)}' for k in changed)});"
            f" evaluating {entry['id']} again")
        return None
    return stored


def _same_mixture(a, b) -> bool:
    return (isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b)
            and all(isinstance(a[k], (int, float)) and math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-12) for k in a))


class TaskSuite:
    """The plan's tasks loaded once (datasets read, documents built) and their requests built once, evaluated
    per proxy as lm-eval's `simple_evaluate` does: num_fewshot defaulted to 0, the few-shot sampler and the
    random, numpy and torch generators re-seeded with lm-eval's default seeds before every run, so each
    proxy sees the same prompts as a separate `simple_evaluate` would give it.

    Requests (prompts) do not depend on the weights, and building them (a Jinja template compiled per
    document) cost lm-eval ~0.8 s per proxy on the demo, a third of a mixture's time. So they are built
    here, with the arguments lm-eval's `evaluate` passes for one process without a chat template, and
    each task's `build_all_requests` becomes emptying its instances' responses: `evaluate` then runs on the
    same instances a fresh build gives (same documents, same seeds), with nothing left from the last proxy.
    The documents and their targets, read again by lm-eval's scoring, are remembered too (`_remember_documents`),
    and `reads_greedy` says whether any task scores the greedy flag (else the model skips computing it)."""

    def __init__(self, plan: TaskPlan, manager, limit: int | None = None):
        from lm_eval.evaluator_utils import get_sample_size

        self.loaded = manager.load(plan.tasks)
        self.limit = limit
        for task in self.loaded["tasks"].values():
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
        self._seed()
        for task in self.loaded["tasks"].values():
            size = get_sample_size(task, limit)
            task.build_all_requests(limit=size, rank=0, world_size=1)
            task.build_all_requests = partial(_clear_responses, task.instances)
            _remember_documents(task, size)
        self.reads_greedy = any(map(reads_greedy, self.loaded["tasks"].values()))

    def _seed(self) -> None:
        import random

        import numpy
        import torch
        from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

        random.seed(DEFAULT_RANDOM_SEED)
        numpy.random.seed(DEFAULT_OTHER_SEED)
        torch.manual_seed(DEFAULT_OTHER_SEED)
        for task in self.loaded["tasks"].values():
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)

    def run(self, lm) -> dict:
        """lm-eval's results dict, reduced to plain JSON: results, versions, higher_is_better."""
        from lm_eval.evaluator import evaluate

        self._seed()
        return plain_results(evaluate(lm=lm, task_dict=self.loaded, limit=self.limit, log_samples=True, verbosity="WARNING"))


def reads_greedy(task) -> bool:
    """Whether lm-eval scores `task` with the greedy flag of its log-likelihoods (lm-eval's
    ConfigurableTask.process_results: `acc` of a loglikelihood task, `exact_match` of a multiple-choice one);
    a task that does not say which metrics it computes is taken to read it."""
    metrics = getattr(task, "_metric_fn_list", None)
    if metrics is None:
        return True
    return (task.OUTPUT_TYPE == "loglikelihood" and "acc" in metrics) or (
        task.OUTPUT_TYPE == "multiple_choice" and "exact_match" in metrics) or task.OUTPUT_TYPE not in (
        "loglikelihood", "multiple_choice", "loglikelihood_rolling", "generate_until")


def _remember_documents(task, size: int | None) -> None:
    """The task's documents and their targets, read once: lm-eval's scoring reads the dataset again and renders
    each target again (a Jinja template compiled per document, ~0.25 s a proxy on the demo) on every run, for
    the same documents. Asked with other arguments, the task reads as before."""
    read, target = task.doc_iterator, task.doc_to_target
    documents = list(read(rank=0, limit=size, world_size=1))
    targets = {id(doc): target(doc) for _, doc in documents}

    def doc_iterator(*, rank=0, limit=None, world_size=1, samples=None):
        if (rank, limit, world_size, samples) == (0, size, 1, None):
            return iter(documents)
        return read(rank=rank, limit=limit, world_size=world_size, samples=samples)

    def doc_to_target(doc, *args, **kwargs):
        return targets[id(doc)] if id(doc) in targets and not args and not kwargs else target(doc, *args, **kwargs)

    task.doc_iterator, task.doc_to_target = doc_iterator, doc_to_target


def _clear_responses(instances, **_build_arguments) -> None:
    for instance in instances:
        instance.resps.clear()
        instance.filtered_resps.clear()


def simple_evaluate(lm, plan: TaskPlan, manager, limit: int | None = None) -> dict:
    """One proxy through lm-eval's own `simple_evaluate` (what a separate run does), reduced like `TaskSuite.run`."""
    import lm_eval

    return plain_results(lm_eval.simple_evaluate(model=lm, tasks=plan.tasks, task_manager=manager, limit=limit,
                                                 log_samples=True, verbosity="WARNING"))


def ratio_stderr(pairs: list) -> float:
    """Standard error of sum(a) / sum(b) over documents (a, b), by the delta method for a ratio estimator:
    sqrt(n / (n - 1) * sum((a_i - r b_i)^2)) / sum(b). Documents are the sampling unit, as for lm-eval's
    mean metrics."""
    a, b = (np.asarray(column, dtype=np.float64) for column in zip(*pairs))
    n = len(a)
    if n < 2 or b.sum() <= 0:
        return float("nan")
    ratio = a.sum() / b.sum()
    return float(np.sqrt(n / (n - 1) * np.sum((a - ratio * b) ** 2)) / b.sum())


def fill_ratio_stderrs(results: dict) -> None:
    """Give bits per byte its standard error where lm-eval has none, from the logged per-document pairs
    (bits per byte = -ratio / ln 2, so its stderr is the ratio's / ln 2); the perplexities stay N/A."""
    for task, samples in (results.get("samples") or {}).items():
        values = results["results"].get(task, {})
        for key in [k for k in values if k.startswith("bits_per_byte,")]:
            stderr_key = key.replace("bits_per_byte,", "bits_per_byte_stderr,")
            if isinstance(values.get(stderr_key), (int, float)):
                continue
            pairs = [sample["bits_per_byte"] for sample in samples if sample.get("filter") == key.split(",", 1)[1]]
            if pairs:
                values[stderr_key] = ratio_stderr(pairs) / math.log(2)


def plain_results(results: dict) -> dict:
    """lm-eval's results dict reduced to plain JSON (results, versions, higher_is_better), after the
    logged samples served to fill the standard errors lm-eval leaves out; the samples are dropped."""
    fill_ratio_stderrs(results)
    kept = {key: results.get(key, {}) for key in ("results", "versions", "higher_is_better")}
    return json.loads(json.dumps(kept, default=str))  # plain JSON types, as the result file holds them


def result_path(output_dir: Path, ident: str) -> Path:
    return Path(output_dir) / f"{ident}.json"


def components_refill(model, source, regions_by_key: dict, mode: str, log) -> Callable[[list[float]], None]:
    """`refill(weights)` for `model`: from the components held in memory, laid out flat (eval/refill.py), or
    merged on load from `source`, chunk by chunk, for each mixture when they do not fit."""
    import psutil

    from megatron_demix.eval.refill import FlatRefill
    from megatron_demix.merge.sources import fill_model

    need, available = source.bytes_to_cache, psutil.virtual_memory().available
    fits = need < 0.5 * available
    if mode == "always" or (mode == "auto" and fits):
        log(f"[eval] holding the components in memory: {need / GB:.3f} GB ({available / GB:.1f} GB available)")
        return FlatRefill(regions_by_key, source.cached())
    log(f"[eval] components need {need / GB:.3f} GB in memory, {available / GB:.1f} GB available"
        f" (eval.cache_components={mode}): merging on load from disk for each mixture")
    return lambda weights: fill_model(model, source, weights, regions_by_key)


class ProxyEvaluator:
    """The many-mixtures loop, set up once before its first mixture: the task suite (requests built once), the
    components (held in memory or merged on load), the model and its lm-eval wrapper. Per mixture only what
    depends on the weights runs: `refill` recomputes them in place, then the suite scores the tasks.

        with ProxyEvaluator(experiment, mixtures) as evaluator:
            record = evaluator.evaluate(mixtures[0])       # result_record + "models"; nothing written

    `mixtures` are those it will evaluate (they say whether the components are needed); `plan` defaults to
    `task_plan(experiment)`.
    """

    def __init__(self, experiment, mixtures: list[dict], plan: TaskPlan | None = None, log: Callable[[str], None] = print):
        from megatron_demix.checkpoint.tensors import model_regions
        from megatron_demix.data.tokenizer import load_tokenizer
        from megatron_demix.eval.model import GPTModelLM, parse_dtype
        from megatron_demix.model.inference import inference_model

        self.experiment, self.settings = experiment, experiment.eval
        self.plan = plan or task_plan(experiment)
        self.suite = TaskSuite(self.plan, task_manager(self.plan), self.settings.limit)
        self.source = self.fill = None
        if any(not entry.get("checkpoint") for entry in mixtures):  # the components of every mixture's proxy
            self.source = experiment.proxy(mixtures[0]["mixture"]).open()
        tokenizer = load_tokenizer(experiment.paths.tokenizer)
        self.model = inference_model(experiment.model, tokenizer.vocab_size, seed=experiment.training.seed,
                                     dtype=parse_dtype(self.settings.dtype))
        self.regions = model_regions(self.model)
        self.lm = GPTModelLM(self.model, RememberingTokenizer(tokenizer), experiment, batch_size=self.settings.batch_size,
                             max_length=self.settings.max_length, greedy=self.suite.reads_greedy)
        if self.source is not None:
            self.fill = components_refill(self.model, self.source, self.regions, self.settings.cache_components, log)

    def refill(self, entry: dict) -> None:
        """The model's weights become the entry's proxy: sum_i w_i * Theta_i of the components, or its own
        trained checkpoint (a reference, a trained proxy) at weight 1."""
        from megatron_demix.merge.sources import ComponentSource, fill_model

        if entry.get("checkpoint"):
            trained = ComponentSource.open([entry["checkpoint"]], [f"{entry['id']} ({entry['checkpoint']})"])
            try:
                fill_model(self.model, trained, [1.0], self.regions)
            finally:
                trained.close()
        else:
            self.fill(self.experiment.proxy(entry["mixture"]).weights)

    def evaluate(self, entry: dict) -> dict:
        """The entry's result record (eval/proxies.py's fields, "models" included); nothing is written."""
        began = time.perf_counter()
        self.refill(entry)
        results = self.suite.run(self.lm)
        return {**result_record(entry["id"], entry["mixture"], results, self.plan, time.perf_counter() - began),
                "models": model_identity(self.experiment, entry)}

    def close(self) -> None:
        if self.source is not None:
            self.source.close()

    def __enter__(self) -> "ProxyEvaluator":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class RememberingTokenizer:
    """The tokenizer, remembering what it encoded: every proxy is asked for the same strings (~0.15 s a proxy
    on the demo's tasks otherwise). The ids are returned as a copy, as a fresh encoding would be."""

    def __init__(self, tokenizer):
        self._tokenizer, self._ids = tokenizer, {}

    def tokenize(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = self._tokenizer.tokenize(text)
        return list(ids)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def evaluate_mixtures(experiment, mixtures: list[dict], output_dir, tasks=None, *,
                      log: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict[str, dict]:
    """Evaluate each mixture's proxy into `<output_dir>/<id>.json`; returns {id: result} (those found on disk
    included). Set-up happens once (ProxyEvaluator); the first failure stops the loop."""
    output_dir = Path(output_dir)
    check_mixtures(experiment, mixtures)
    models = {m["id"]: model_identity(experiment, m) for m in mixtures}
    done = {m["id"]: stored for m in mixtures
            if (stored := reusable_result(result_path(output_dir, m["id"]), m, models[m["id"]], log)) is not None}
    pending = [m for m in mixtures if m["id"] not in done]
    plan = task_plan(experiment, tasks)
    log(f"[eval] {len(mixtures)} mixture(s): {len(done)} already evaluated, {len(pending)} to evaluate;"
        f" tasks: {', '.join(plan.tasks)}")
    if not pending:
        return done
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProxyEvaluator(experiment, pending, plan, log) as evaluator:
        for number, entry in enumerate(pending, 1):
            record = evaluator.evaluate(entry)
            write_result(result_path(output_dir, entry["id"]), record)
            done[entry["id"]] = record
            rate = (time.perf_counter() - start) / number
            log(f"[eval] {number}/{len(pending)} {entry['id']}: {record['domains']} ({record['seconds']:.1f} s;"
                f" ETA {rate * (len(pending) - number):.0f} s)")
    return done


def write_result(target: Path, record: dict) -> None:
    """The one write of a mixture's result: atomic, after removing what a killed writer left."""
    remove_stale_temporaries(target)
    atomic_write_json(target, record)
