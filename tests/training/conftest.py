"""Training fixtures: a tiny prepared experiment (made here, see train_helpers.py) and its base model."""
from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import check, torchrun, write_tiny_experiment


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    return write_tiny_experiment(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained_base(tiny_config) -> Path:
    """The tiny experiment's base model, trained at TP=2 (8 iterations) into its default save directory."""
    check(torchrun(2, "--config", tiny_config, "--component", "base", "--tensor-model-parallel-size", 2))
    return tiny_config.parent / "checkpoints" / "base"
