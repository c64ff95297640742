"""Built-in lm-eval tasks for an experiment's evaluation domains, written by `demix prepare`.

    <work_dir>/eval/tasks/demix_<domain>_choice.yaml   + <domain>/choice.jsonl
    <work_dir>/eval/tasks/demix_<domain>_bpb.yaml      + <domain>/bpb.jsonl

The domains are the datasets' `domain` fields (unset: each dataset is its own domain), so several
candidates (a domain's quality tiers) share one domain, as the paper's general / math / code. Per
domain, two offline tasks (`dataset_path: json`, run with `--include_path <work_dir>/eval/tasks`
and HF_DATASETS_OFFLINE=1):
- `demix_<domain>_choice` (multiple_choice, `acc`): the first words of a passage, and its true next
  words among continuations of other passages of the same domain;
- `demix_<domain>_bpb` (loglikelihood_rolling, `bits_per_byte`, lower is better): whole documents.

Held-out documents only, of the domain's first dataset listed (its cleanest: a domain is scored on
good text, not on the damaged text of its low tier): the documents of that dataset's validation
split, which no trainer trains on. Megatron splits an indexed dataset by document ranges
(`data/datasets.py`: DATA_SPLIT "98,2,0"), so the held-out documents are exactly the range
megatron-core gives the validation split; they are read back from the prepared `.bin/.idx` and
detokenized, so the task text is the text the model would have seen (works for datasets given as
`.bin/.idx` too). That no other dataset holds them is checked by content (eval/contamination.py).
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import yaml

from megatron_demix.runtime.files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CONTEXT_WORDS = 24
"""Words of a passage shown as the question of a choice item."""
CONTINUATION_WORDS = 8
"""Words of each answer (the true continuation and the distractors)."""
CHOICES = 4
BPB_CHARACTERS = 4000
"""Longest document text in a bits-per-byte task (long held-out documents are cut at a space)."""


def tasks_dir(experiment) -> Path:
    return experiment.paths.eval_tasks


def task_names(domain: str) -> dict[str, str]:
    """{kind: task name} of one domain's built-in tasks."""
    return {"choice": f"demix_{domain}_choice", "bpb": f"demix_{domain}_bpb"}


def task_files(experiment) -> dict[str, dict[str, Path]]:
    """domain -> {kind: the JSONL file of its built-in task}."""
    root = tasks_dir(experiment)
    return {domain: {kind: root / domain / f"{kind}.jsonl" for kind in ("choice", "bpb")}
            for domain in domain_sources(experiment)}


def domain_sources(experiment) -> dict[str, str]:
    """Evaluation domain -> the dataset its built-in tasks are made from: the domain's first dataset listed."""
    sources: dict[str, str] = {}
    for dataset in experiment.datasets:
        sources.setdefault(dataset.eval_domain, dataset.name)
    return sources


BUILTIN_METRICS = {"choice": "acc", "bpb": "bits_per_byte"}
"""The metric each kind of built-in task is scored with."""


def default_tasks(experiment) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(domain -> task names, task -> metric) of the built-in tasks: one domain per `domain` of the datasets.

    Once `demix prepare` wrote them, only the tasks it could make are listed (a dataset too small
    to hold out passages has none, and its domain none)."""
    root = tasks_dir(experiment)
    tasks, metrics = {}, {}
    for domain in domain_sources(experiment):
        names = {kind: task for kind, task in task_names(domain).items()
                 if not root.is_dir() or (root / f"{task}.yaml").is_file()}
        if names:
            tasks[domain] = list(names.values())
            metrics.update({names[kind]: BUILTIN_METRICS[kind] for kind in names})
    return tasks, metrics


def held_out_documents(experiment, name: str, tokenizer) -> list[str]:
    """The validation-split documents of dataset `name`, as text (end-of-document token removed)."""
    return split_documents(experiment, name, tokenizer, "validation")


def split_documents(experiment, name: str, tokenizer, split: str | None = None) -> list[str]:
    """The documents of dataset `name` in Megatron's `split` ("train", "validation"; None: all), as text."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_demix.data.datasets import DATA_SPLIT

    index = IndexedDataset(str(experiment.paths.dataset_prefix(name)))
    count = len(index.sequence_lengths)
    begin, end = 0, count
    if split is not None:
        bounds = convert_split_vector_to_split_matrix(parse_and_normalize_split(DATA_SPLIT))[["train", "validation"].index(split)]
        begin, end = int(round(bounds[0] * count)), int(round(bounds[1] * count))
    texts = []
    for i in range(begin, end):
        ids = index[i].tolist()
        if ids and ids[-1] == tokenizer.eod:
            ids = ids[:-1]
        text = tokenizer.detokenize(ids).strip()
        if text:
            texts.append(text)
    return texts


def passages(documents: list[str]) -> list[tuple[str, str]]:
    """(opening, next words) windows of the documents, consecutive and non-overlapping: a few long
    held-out documents (a small validation split) still give many items."""
    size = CONTEXT_WORDS + CONTINUATION_WORDS
    found = []
    for text in documents:
        words = text.split()
        for start in range(0, len(words) - size + 1, size):
            window = words[start:start + size]
            found.append((" ".join(window[:CONTEXT_WORDS]), " ".join(window[CONTEXT_WORDS:])))
    return found


def choice_items(documents: list[str], limit: int, seed: int) -> list[dict]:
    """Multiple-choice items: a passage's opening, its true continuation and same-domain distractors
    (continuations of other passages), the passages spread evenly over the documents."""
    found = passages(documents)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(found)), min(limit, len(found))))
    items = []
    for number in chosen:
        context, answer = found[number]
        others = list(dict.fromkeys(c for _, c in found if c != answer))
        if len(others) < CHOICES - 1:
            break
        choices = rng.sample(others, CHOICES - 1)
        label = rng.randrange(CHOICES)
        choices.insert(label, answer)
        items.append({"context": context, "choices": choices, "label": label})
    return items


def excerpt(text: str, limit: int = BPB_CHARACTERS) -> str:
    """At most `limit` characters of a document, cut at a whitespace (bits per byte stays per byte)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > 0 else limit]


def _task_yaml(task: str, data_file: Path, kind: str) -> dict:
    common = {
        "task": task, "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": str(data_file)}, "test_split": "train",
        "metadata": {"version": 1.0},
    }
    if kind == "choice":
        return {**common, "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "choices",
                "doc_to_target": "label",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    return {**common, "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
            "metric_list": [
                {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}]}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _task_inputs(experiment) -> dict | None:
    """What the tasks are made from: each dataset's preparation record (data/prepare.py writes it with
    every build) and the task settings. None when a dataset has no record: the tasks are then always
    written."""
    records = {}
    for dataset in experiment.datasets:
        path = experiment.paths.token_count(dataset.name)
        if not path.is_file():
            return None
        records[dataset.name] = json.loads(path.read_text())
    settings = experiment.eval
    return {"root": str(tasks_dir(experiment)), "datasets": records,  # the task files name their data by path
            "domains": domain_sources(experiment),
            "questions": settings.builtin_questions, "documents": settings.builtin_documents,
            "seed": experiment.training.seed, "context_words": CONTEXT_WORDS, "continuation_words": CONTINUATION_WORDS,
            "choices": CHOICES, "bpb_characters": BPB_CHARACTERS}


def write_builtin_tasks(experiment, tokenizer=None) -> Path:
    """Write every domain's two tasks under `tasks_dir(experiment)`; returns that directory.

    Skipped when `inputs.json` there records the same inputs: reading the held-out documents needs
    megatron-core (and torch, seconds to import), and a prepared experiment is checked at the start
    of every pipeline run."""
    from megatron_demix.data.tokenizer import load_tokenizer

    root = tasks_dir(experiment)
    stamp, inputs = root / "inputs.json", _task_inputs(experiment)
    if inputs is not None and stamp.is_file() and json.loads(stamp.read_text()) == inputs:
        log.info("built-in tasks in %s: up to date", root)
        return root
    stamp.unlink(missing_ok=True)
    tokenizer = tokenizer or load_tokenizer(experiment.paths.tokenizer)
    settings = experiment.eval
    root.mkdir(parents=True, exist_ok=True)
    files_of = task_files(experiment)
    for number, (domain, source) in enumerate(domain_sources(experiment).items()):
        documents = held_out_documents(experiment, source, tokenizer)
        items = choice_items(documents, settings.builtin_questions, seed=experiment.training.seed + number)
        names, files = task_names(domain), files_of[domain]
        rows = {"choice": items, "bpb": [{"text": excerpt(t)} for t in documents[: settings.builtin_documents]]}
        for kind, task in names.items():
            if not rows[kind]:
                # Never fail `demix prepare` for a small dataset: it just gets no such task (and says so).
                log.warning("domain %s: the %d held-out documents of dataset %s are too few for task %s (it needs %s);"
                            " no such task", domain, len(documents), source, task,
                            f"{CHOICES} passages of {CONTEXT_WORDS + CONTINUATION_WORDS} words" if kind == "choice" else "one document")
                (root / f"{task}.yaml").unlink(missing_ok=True)
                continue
            _write_jsonl(files[kind], rows[kind])
            atomic_write_text(root / f"{task}.yaml", yaml.safe_dump(_task_yaml(task, files[kind], kind), sort_keys=False))
    if inputs is not None:
        atomic_write_json(stamp, inputs)
    return root
