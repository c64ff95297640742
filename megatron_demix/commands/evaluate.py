"""An evaluation task of the search: the function each array task calls by name (search/rounds.py: EVALUATE).

    evaluate_batch(config="work/experiment.yaml", mixtures=[{"id": "r0-0003", "mixture": {...}}],
                   results_dir="work/search/round-0/results")

Reads the experiment file once, then scores the mixtures in this process (search/evaluate.py: score_mixtures).
"""
from __future__ import annotations

from pathlib import Path


def evaluate_batch(config: str, mixtures: list[dict], results_dir: str) -> dict:
    """{"evaluated": [...], "skipped": [...]}; raises EvaluationFailed naming each failed mixture."""
    from megatron_demix.experiment import load_experiment
    from megatron_demix.search.evaluate import score_mixtures

    return score_mixtures(load_experiment(config), config, mixtures, Path(results_dir))
