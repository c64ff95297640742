"""Hugging Face fixtures: the Llama checkpoints are tests/conftest.py's `eval_experiment` (base TP=2, code PP=2,
math TP=1); the Qwen3 one (QK layer norm, GQA 4/2) is trained here once, at TP=2 x PP=2 (4 processes)."""
from __future__ import annotations

import pytest
import yaml


@pytest.fixture(scope="session")
def qwen3_checkpoint(tmp_path_factory):
    """The save root of a QK-norm base trained 2 iterations at TP=2, PP=2."""
    from tests.training.train_helpers import check, torchrun, write_tiny_experiment

    config = write_tiny_experiment(tmp_path_factory.mktemp("qwen3"), base_train_iters=2)
    data = yaml.safe_load(config.read_text())
    data["model"]["qk_layernorm"] = True
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    check(torchrun(4, "--config", config, "--component", "base", "--tensor-model-parallel-size", 2,
                   "--pipeline-model-parallel-size", 2))
    return config.parent / "checkpoints" / "base"
