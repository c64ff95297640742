"""Evaluation fixtures, trained once per session by the real trainer (torchrun, gloo, CPU):

    base: TP=2 (8 iterations)      code: PP=2 from the base      math: TP=1 from the base

so every load below reshards (TP=2 -> 1, PP=2 -> 1) and merges inputs saved with different
chunk layouts. The built-in lm-eval tasks are generated from the held-out documents.
"""
from __future__ import annotations

import pytest

from tests.training.train_helpers import check, torchrun, write_tiny_experiment


@pytest.fixture(scope="session")
def eval_experiment(tmp_path_factory):
    """(experiment config path, ExperimentConfig) with base + 2 trained components and built-in tasks."""
    from megatron_demix.experiment import load_experiment
    from megatron_demix.eval.builtin_tasks import write_builtin_tasks

    config = write_tiny_experiment(tmp_path_factory.mktemp("eval"), train_iters=2)
    check(torchrun(2, "--config", config, "--component", "base", "--tensor-model-parallel-size", 2))
    check(torchrun(2, "--config", config, "--component", "code", "--pipeline-model-parallel-size", 2))
    check(torchrun(1, "--config", config, "--component", "math"))
    experiment = load_experiment(config)
    write_builtin_tasks(experiment)
    return config, experiment


@pytest.fixture(scope="session")
def base_lm(eval_experiment):
    """The TP=2 base loaded in this process at TP=PP=1, batch size 3."""
    from megatron_demix.eval.model import MegatronDemixLM

    _, experiment = eval_experiment
    return MegatronDemixLM(pretrained=experiment.paths.checkpoint("base"), batch_size=3)
