"""Contamination of a prepared experiment, checked by content (the window test of data/contamination.py):

(a) no document of one dataset shares a window with another dataset;
(b) no held-out evaluation text (the built-in tasks' items and documents) shares a window with any
    dataset's training split (the documents the trainer draws from, its own dataset's included).

    demix contamination --config configs/demo.yaml    # after `demix prepare`; exit 1 on any overlap
"""
from __future__ import annotations

import json

from megatron_demix.data.contamination import WINDOW_WORDS, cross_corpus_overlaps, held_out_overlaps
from megatron_demix.data.builtin_tasks import split_documents, task_files


def evaluation_texts(experiment) -> dict[str, list[str]]:
    """domain -> the texts of its built-in tasks: each choice item's passage (question + true answer)
    and each bits-per-byte document, as `demix prepare` wrote them."""
    texts: dict[str, list[str]] = {}
    for domain, files in task_files(experiment).items():
        rows = texts.setdefault(domain, [])
        if files["choice"].is_file():
            for line in files["choice"].read_text().splitlines():
                item = json.loads(line)
                rows.append(f"{item['context']} {item['choices'][item['label']]}")
        if files["bpb"].is_file():
            rows.extend(json.loads(line)["text"] for line in files["bpb"].read_text().splitlines())
    return texts


def check_experiment(experiment, words: int = WINDOW_WORDS) -> dict:
    """Checks (a) and (b) on a prepared experiment; returns both summaries."""
    from megatron_demix.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(experiment.paths.tokenizer)
    every = {d.name: split_documents(experiment, d.name, tokenizer) for d in experiment.datasets}
    training = {d.name: split_documents(experiment, d.name, tokenizer, "train") for d in experiment.datasets}
    cross = cross_corpus_overlaps(every, words)
    held_out = held_out_overlaps(evaluation_texts(experiment), training, words)
    return {"window_words": words, "documents": {name: len(docs) for name, docs in every.items()},
            "cross_corpus": cross.summary(), "held_out_in_training": held_out.summary()}
