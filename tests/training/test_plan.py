"""What a launch trains, in one process without torch.distributed: budgets, blends, names, flags.

    .venv/bin/python -m pytest -q tests/training/test_plan.py
"""
from __future__ import annotations

import dataclasses

import pytest

from megatron_demix.config.base import ConfigError
from megatron_demix.experiment import load_experiment
from megatron_demix.data.datasets import blend_for
from megatron_demix.training.run_options import RunOptions, resolve_model, train_iters_for


def test_budgets_in_iterations_or_tokens(tiny_config):
    experiment = load_experiment(tiny_config)
    assert train_iters_for(experiment, "base") == 8 and train_iters_for(experiment, "code") == 4
    # 4 sequences of 64 tokens per iteration: 1000 tokens round up to 4 iterations.
    tokens = dataclasses.replace(experiment, training=dataclasses.replace(experiment.training, train_tokens=1000))
    assert train_iters_for(tokens, "code") == 4 and train_iters_for(tokens, "base") == 8


def test_component_blend_is_beta_general_plus_candidate(tiny_config):
    experiment = load_experiment(tiny_config)
    assert blend_for(experiment, "base").domains == ("general",)
    code = blend_for(experiment, "code")
    assert code.domains == ("general", "code") and code.weights == (0.5, 0.5)
    quarter = dataclasses.replace(experiment, training=dataclasses.replace(experiment.training, beta=0.25))
    assert blend_for(quarter, "math").weights == (0.25, 0.75)


def test_component_names_and_indices(tiny_config):
    experiment = load_experiment(tiny_config)
    assert [resolve_model(experiment, c) for c in ("0", "1", "math", "base")] == ["code", "math", "math", "base"]
    with pytest.raises(ConfigError, match=r"--component '2'.*'base', a candidate name \(code, math\) or an index 0..1"):
        resolve_model(experiment, "2")


def test_run_defaults_follow_the_experiment_paths(tiny_config, tmp_path):
    experiment = load_experiment(tiny_config)
    run = RunOptions.defaults(experiment, "code")
    assert run.save == run.load == experiment.paths.checkpoint("code")
    assert run.pretrained == experiment.paths.checkpoint("base")
    moved = RunOptions.defaults(experiment, "code", save=tmp_path)
    assert moved.save == moved.load == tmp_path
    assert RunOptions.defaults(experiment, "base").pretrained is None


def test_already_trained_only_at_or_past_the_budget_of_its_own_save_root(tmp_path):
    from megatron_demix.checkpoint.layout import CheckpointError, write_tracker
    from megatron_demix.training.run_options import already_trained

    save = tmp_path / "save"
    run = RunOptions(model_name="code", save=save, load=save, pretrained=None, train_iters=6, log_dir=tmp_path)
    assert already_trained(run) is None  # nothing saved
    write_tracker(save, 4)
    assert already_trained(run) is None  # resumes at 4
    write_tracker(save, 6)
    with pytest.raises(CheckpointError, match="iter_0000006: named by latest_checkpointed_iteration.txt but missing"):
        already_trained(run)  # at its budget, but damaged: what a resume would say (complete: the launcher test)
    assert already_trained(dataclasses.replace(run, load=tmp_path / "elsewhere")) is None  # loads another root
