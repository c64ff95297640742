"""Bad input fails before any training step, with an error naming the flag or key and the fix.

    .venv/bin/python -m pytest -q tests/training/test_bad_input.py
"""
from __future__ import annotations

import subprocess
import sys

import yaml
from train_helpers import LAUNCH, REPO


def _launch(*args) -> subprocess.CompletedProcess:
    """One process (world size 1), as `python launch/train_component.py ...`."""
    return subprocess.run([sys.executable, str(LAUNCH), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def _variant(tiny_config, tmp_path, **changes):
    data = yaml.safe_load(tiny_config.read_text())
    for section, values in changes.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _failed_before_training(result, save, *phrases):
    assert result.returncode == 2, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr[-3000:]
    assert "training" not in result.stdout and not save.exists()


def test_tensor_parallel_must_divide_heads(tiny_config, tmp_path):
    save = tmp_path / "save"
    result = _launch("--config", tiny_config, "--component", "base", "--tensor-model-parallel-size", 3, "--save", save)
    _failed_before_training(result, save, "--tensor-model-parallel-size 3 must divide model.num_attention_heads=4")


def test_batch_sizes_must_fit(tiny_config, tmp_path):
    save = tmp_path / "save"
    result = _launch("--config", tiny_config, "--component", "base", "--micro-batch-size", 3, "--save", save)
    _failed_before_training(result, save, "global_batch_size", "not a multiple of micro_batch_size=3")


def test_missing_data_names_the_file_and_the_fix(tiny_config, tmp_path):
    config = _variant(tiny_config, tmp_path, work_dir=str(tmp_path / "empty"))
    save = tmp_path / "save"
    result = _launch("--config", config, "--component", "code", "--save", save)
    _failed_before_training(result, save, "dataset 'general': missing", "general.bin", "demix prepare")


def test_base_checkpoint_with_other_shapes(tiny_config, trained_base, tmp_path):
    config = _variant(tiny_config, tmp_path, model={"hidden_size": 128})
    save = tmp_path / "save"
    result = _launch("--config", config, "--component", "code", "--save", save)
    _failed_before_training(
        result, save, "does not fit this model", "decoder.final_layernorm.weight: checkpoint (64,), this model (128,)", "model:",
    )
