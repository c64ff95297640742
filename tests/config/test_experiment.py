"""The experiment file: the demo loads; bad keys and values fail with the key, the fix and the file."""
from __future__ import annotations

import pytest
import yaml

from megatron_demix.config.base import ConfigError
from megatron_demix.experiment import load_experiment
from megatron_demix.model.gpt import check_parallel_fits
from tests.conftest import REPO


def test_demo_config_loads():
    experiment = load_experiment(REPO / "configs" / "demo.yaml")
    assert experiment.general.name == "general"
    assert [d.name for d in experiment.candidates] == [f"{domain}_{tier}" for domain in ("code", "math")
                                                       for tier in ("high", "medium", "low")]
    assert [d.eval_domain for d in experiment.datasets] == ["general"] + ["code"] * 3 + ["math"] * 3
    assert experiment.model.num_query_groups == 2  # from the tiny preset
    assert experiment.paths.dataset_prefix("code_high").name == "code_high"


def _write(tmp_path, data) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("change, message", [
    ({"trainig": {}}, "unknown key 'trainig': did you mean 'training'?"),
    ({"merge": {"method": "avg"}}, "merge.method: 'avg' is not one of 'linear', 'task_arithmetic'"),
    ({"training": {"beta": 1.5}}, "training.beta: 1.5 must be in [0, 1)"),
    ({"training": {"micro_batch_size": "four"}}, "training.micro_batch_size: must be an integer (got 'four')"),
    ({"model": {"preset": "huge"}}, "model.preset: 'huge' is not one of 'tiny', 'qwen3-1.7b'"),
    ({"datasets": [{"name": "a", "builtin": "code"}]}, "exactly one dataset needs role: general"),
    ({"datasets": [{"name": "g", "role": "general", "builtin": "code", "path": "x"}, {"name": "c", "builtin": "math"}]},
     "give exactly one of 'builtin'"),
])
def test_bad_values_name_file_key_and_allowed_values(tmp_path, change, message):
    data = {**yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()), **change}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    assert str(error.value).startswith(path)
    assert message in str(error.value)


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the experiment file.*--config"):
        load_experiment(tmp_path / "none.yaml")


def test_tensor_parallel_must_divide_heads():
    experiment = load_experiment(REPO / "configs" / "demo.yaml")
    with pytest.raises(ConfigError, match="--tensor-model-parallel-size 3 must divide model.num_attention_heads=4"):
        check_parallel_fits(experiment.model, 3, 1)


def test_paper_config_validates_and_matches_the_paper():
    from megatron_demix.training.run_options import train_iters_for

    experiment = load_experiment(REPO / "configs" / "paper.yaml")
    assert len(experiment.candidates) == 7
    assert experiment.model.num_layers == 28 and experiment.model.qk_layernorm
    assert experiment.training.min_lr == pytest.approx(0.2 * experiment.training.lr)
    # 30B tokens at 512 x 8192 tokens per iteration.
    assert train_iters_for(experiment, "math_high") == 7153
    check_parallel_fits(experiment.model, 8, 4)
