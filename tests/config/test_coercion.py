"""Config coercion (in-process): numbers as a YAML user writes them, bounds, and `file: dotted.key` messages."""
from __future__ import annotations

import pytest
import yaml

from megatron_demix.config.base import ConfigError, build
from megatron_demix.experiment import load_experiment
from megatron_demix.training.config import TrainingConfig
from tests.conftest import REPO


def test_pyyaml_reads_3e_minus_4_as_a_string_and_it_is_accepted_as_a_float(tmp_path):
    assert yaml.safe_load("lr: 3e-4") == {"lr": "3e-4"}  # the YAML 1.1 quirk this handles
    training = build(TrainingConfig, yaml.safe_load("lr: 3e-4\nmin_lr: 6e-5\ntrain_tokens: 3e9"), "exp.yaml: training")
    assert training.lr == 3e-4 and isinstance(training.lr, float)
    assert training.min_lr == 6e-5
    assert training.train_tokens == 3_000_000_000 and isinstance(training.train_tokens, int)


@pytest.mark.parametrize("values, message", [
    ({"save_interval": -5}, "exp.yaml: training.save_interval: -5 must be >= 0"),
    ({"keep_checkpoints": -1}, "exp.yaml: training.keep_checkpoints: -1 must be >= 0"),
    ({"log_interval": 0}, "exp.yaml: training.log_interval: 0 must be >= 1"),
    ({"train_tokens": 0}, "exp.yaml: training.train_tokens: 0 must be >= 1"),
    ({"lr": "fast"}, "exp.yaml: training.lr: must be a number (got 'fast')"),
    ({"lr": float("nan")}, "exp.yaml: training.lr: must be a finite number (got nan)"),
    ({"lr": 0}, "exp.yaml: training.lr: 0.0 must be > 0"),
    ({"micro_batch_size": 2.5}, "exp.yaml: training.micro_batch_size: must be an integer (got 2.5)"),
    ({"micro_batch_size": True}, "exp.yaml: training.micro_batch_size: must be an integer (got True)"),
])
def test_bad_training_values_name_file_and_dotted_key(values, message):
    with pytest.raises(ConfigError) as error:
        build(TrainingConfig, values, "exp.yaml: training")
    assert str(error.value) == message


def test_experiment_file_messages_read_file_colon_key(tmp_path):
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["training"] = {**data.get("training", {}), "save_interval": -5}
    data["model"] = {**data.get("model", {}), "num_layers": 0}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**data, "model": {"preset": "tiny"}}))
    with pytest.raises(ConfigError, match=rf"^{path}: training\.save_interval: -5 must be >= 0$"):
        load_experiment(path)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"^{path}: model\.num_layers: 0 must be >= 1$"):
        load_experiment(path)


def test_unquoted_exponent_in_an_experiment_file(tmp_path):
    text = (REPO / "configs" / "demo.yaml").read_text()
    data = yaml.safe_load(text)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "training"}) + "training:\n  lr: 3e-4\n  min_lr: 1e-5\n")
    experiment = load_experiment(path)
    assert experiment.training.lr == 3e-4 and experiment.training.min_lr == 1e-5


@pytest.mark.parametrize("section, values, message", [
    ("model", {"num_layers": 0}, "exp.yaml: model.num_layers: 0 must be >= 1"),
    ("merge", {"ranks": -1}, "exp.yaml: merge.ranks: -1 must be >= 1"),
    ("prepare", {"chunk_documents": 0}, "exp.yaml: prepare.chunk_documents: 0 must be >= 1"),
])
def test_bounds_of_other_sections(section, values, message):
    from megatron_demix.data.config import PrepareConfig
    from megatron_demix.merge.config import MergeConfig
    from megatron_demix.model.config import ModelConfig

    cls = {"model": ModelConfig, "merge": MergeConfig, "prepare": PrepareConfig}[section]
    with pytest.raises(ConfigError) as error:
        build(cls, values, f"exp.yaml: {section}")
    assert str(error.value) == message
