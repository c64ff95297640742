"""Flags generated from the config dataclasses (config/flags.py): names, help, choices, booleans, overrides."""
from __future__ import annotations

import argparse

import pytest

from megatron_demix.config.base import ConfigError, replace
from megatron_demix.config.flags import add_config_flags, field_docs, flag_overrides
from megatron_demix.merge.config import MergeConfig
from megatron_demix.training.config import TrainingConfig


def _parser(cls, section, exclude=()):
    parser = argparse.ArgumentParser(exit_on_error=False)
    return parser, add_config_flags(parser, cls, section=section, exclude=exclude)


def test_megatron_names_types_and_overrides():
    parser, fields = _parser(TrainingConfig, "training", exclude={"train_iters"})
    args = parser.parse_args(["--tensor-model-parallel-size", "2", "--lr", "3e-3", "--adam-beta2", "0.98", "--precision", "fp32"])
    overrides = flag_overrides(args, fields)
    assert overrides == {"tensor_model_parallel_size": 2, "lr": 3e-3, "adam_beta2": 0.98, "precision": "fp32"}
    assert "train_iters" not in fields and "--train-iters" not in parser.format_help()
    training = replace(TrainingConfig(), where="command line", **overrides)
    assert (training.lr, training.adam_beta1, training.adam_beta2) == (3e-3, 0.9, 0.98)


def test_help_is_the_field_docstring_and_literals_are_choices():
    parser, _ = _parser(TrainingConfig, "training")
    text = " ".join(parser.format_help().split())
    assert "Share of general data in every component's blend (the paper's beta)." in text
    assert "--precision {auto,fp32,bf16}" in text and "(default: the experiment's training.lr)" in text
    assert field_docs(MergeConfig)["scale"] == "Task-arithmetic scale."
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'fp8'"):
        parser.parse_args(["--precision", "fp8"])


def test_booleans_have_both_forms_and_unset_means_the_file_decides():
    parser, fields = _parser(MergeConfig, "merge", exclude={"ranks"})
    assert flag_overrides(parser.parse_args(["--no-normalize"]), fields) == {"normalize": False}
    assert flag_overrides(parser.parse_args(["--normalize"]), fields) == {"normalize": True}
    assert flag_overrides(parser.parse_args([]), fields) == {}
    assert "--ranks" not in parser.format_help()


def test_values_are_validated_by_the_dataclass():
    parser, fields = _parser(TrainingConfig, "training")
    args = parser.parse_args(["--micro-batch-size", "3"])
    with pytest.raises(ConfigError, match="command line: global_batch_size: 8 is not a multiple of micro_batch_size=3"):
        replace(TrainingConfig(), where="command line", **flag_overrides(args, fields))
