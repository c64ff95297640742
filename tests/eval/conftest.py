"""Evaluation fixtures; `eval_experiment` (base TP=2, code PP=2, math TP=1) lives in tests/conftest.py,
shared with the Hugging Face tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base_lm(eval_experiment):
    """The TP=2 base loaded in this process at TP=PP=1, batch size 3."""
    from megatron_demix.commands.lm_eval import MegatronDemixLM

    _, experiment = eval_experiment
    return MegatronDemixLM(pretrained=experiment.paths.checkpoint("base"), batch_size=3)
