"""An experiment that starts from a Hugging Face model (`model: {from_hf: DIR}`): the model section and tokenizer
come from DIR, bad directories and contradicting keys are refused on load, and `demix train` tokenizes with DIR's
tokenizer, imports DIR as the base instead of training one, and trains the components from it."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml

from megatron_demix.config.base import ConfigError
from megatron_demix.cli import load_experiment_file
from megatron_demix.experiment import dump_experiment, load_experiment
from tests.conftest import REPO, VENV_BIN
from tests.hf.hf_helpers import make_hf_model, safetensors_of


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A random Qwen3 (QK norm, tied, GQA 4/2) with the tiny experiments' 512-token tokenizer."""
    from tests.training.train_helpers import write_tiny_experiment

    tiny = write_tiny_experiment(tmp_path_factory.mktemp("tokenizer"))
    model_dir = tmp_path_factory.mktemp("qwen3") / "model"
    model_dir.mkdir()
    return make_hf_model(model_dir, tiny.parent / "tokenizer" / "tokenizer.json", "qwen3", tied=True)


def _experiment(tmp_path, model: dict, **sections) -> dict:
    return {"name": "open", "work_dir": str(tmp_path / "work"),
            "datasets": [{"name": "general", "role": "general", "builtin": "prose"}, {"name": "code", "builtin": "code"}],
            "model": model, **sections}


def _write(tmp_path, data: dict, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_model_section_and_tokenizer_come_from_the_directory(hf_model, tmp_path):
    from megatron_demix.training.run_options import train_iters_for

    experiment = load_experiment_file(_write(tmp_path, _experiment(tmp_path, {"from_hf": str(hf_model), "seq_length": 64})))
    model = experiment.model
    assert (model.num_layers, model.hidden_size, model.ffn_hidden_size, model.num_attention_heads,
            model.num_query_groups, model.kv_channels) == (2, 64, 96, 4, 2, 16)
    assert model.qk_layernorm and not model.add_qkv_bias and not model.untie_embeddings_and_output_weights
    assert (model.rotary_base, model.layernorm_epsilon, model.seq_length) == (50000, 1e-6, 64)
    assert experiment.tokenizer.path == str(hf_model / "tokenizer.json")
    assert train_iters_for(experiment, "base") == 0  # imported, not trained
    # The resolved copy `demix run` writes for its jobs (every key repeated) loads to the same experiment.
    dump_experiment(experiment, tmp_path / "resolved.yaml")
    assert load_experiment(tmp_path / "resolved.yaml") == experiment  # resolved: loads without Hugging Face I/O
    # The file as the user wrote it is not expanded by the experiment loader (no stage I/O on load): it says how.
    with pytest.raises(ConfigError, match="is not expanded .*load the file with a demix command"):
        load_experiment(tmp_path / "exp.yaml")


def test_unusable_directories_and_contradicting_keys_are_refused_on_load(hf_model, tmp_path, capsys):
    from megatron_demix.cli import main

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    bare = tmp_path / "bare"
    bare.mkdir()
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((hf_model / name).read_bytes())
    model = {"from_hf": str(hf_model)}
    cases = [
        ({"from_hf": str(tmp_path / "missing")}, {}, f"model.from_hf {tmp_path / 'missing'}: no such directory"),
        ({"from_hf": str(bare)}, {}, f"model.from_hf {bare}: no config.json"),
        ({"from_hf": str(gpt2)}, {}, "model_type 'gpt2' cannot be imported; supported: llama, qwen2, qwen3"),
        ({"from_hf": str(no_tokenizer)}, {}, f"model.from_hf {no_tokenizer}: no tokenizer.json"),
        ({**model, "num_layers": 3, "hidden_size": 64}, {},
         "model.num_layers: 3 where config.json has 2 (" + str(hf_model / "config.json") + "): remove the key(s)"),
        ({**model, "qk_layernorm": False}, {}, "model.qk_layernorm: False where config.json has True"),
        ({**model, "preset": "tiny"}, {}, "model.preset: 'tiny' and model.from_hf both describe the architecture"),
        ({**model, "num_layerz": 2}, {}, "unknown key 'num_layerz': did you mean 'num_layers'?"),
        (model, {"tokenizer": {"path": str(tmp_path / "other.json")}}, "tokenizer.path: " + str(tmp_path / "other.json")),
    ]
    for i, (section, extra, message) in enumerate(cases):
        path = _write(tmp_path, _experiment(tmp_path, section, **extra), f"bad{i}.yaml")
        with pytest.raises(ConfigError) as error:
            load_experiment_file(path)
        assert message in str(error.value) and str(path) in str(error.value), (message, str(error.value))
    # Keys that agree with config.json, and the open seq_length, are accepted.
    agreeing = {**model, "num_layers": 2, "layernorm_epsilon": "1e-6", "seq_length": 32}
    assert load_experiment_file(_write(tmp_path, _experiment(tmp_path, agreeing))).model.seq_length == 32
    # `demix check` exits 2 with the message, as every command does for bad input.
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--config", str(tmp_path / "bad2.yaml")])
    assert exit_.value.code == 2 and "supported: llama, qwen2, qwen3" in capsys.readouterr().err


def _demix(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "demix"), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_demix_train_imports_the_base_and_trains_the_components_from_it(hf_model, tmp_path):
    from megatron_demix.checkpoint.weights import checkpoint_common
    from megatron_demix.checkpoint.layout import read_tracker
    from megatron_demix.cluster.executor import make_executor
    from megatron_demix.hf.export import export_checkpoint
    from megatron_demix.hf.from_hf import import_base
    from megatron_demix.pipeline import model_complete, plan_pipeline
    from tests.training.train_helpers import train_records

    # lr 1e-6: three Adam steps move each weight by ~3e-6, so the component must still be the imported model
    # (a random start would be ~0.1 away) and must have moved (it trained).
    training = {"micro_batch_size": 2, "global_batch_size": 4, "train_iters": 3, "lr": 1e-6, "min_lr": 1e-7,
                "lr_warmup_iters": 0, "eval_interval": 0, "eval_iters": 1, "log_interval": 1}
    config = _write(tmp_path, _experiment(tmp_path, {"from_hf": str(hf_model), "seq_length": 64},
                                          prepare={"workers": 1, "builtin_megabytes": 0.5}, training=training,
                                          cluster={"executor": "local"}))
    experiment = load_experiment_file(config)
    paths = experiment.paths
    # What `demix run --submit` would submit: the base is one import task with the prepare stage's resources.
    plan = plan_pipeline(experiment, config, make_executor(experiment.cluster, paths.logs), 1)
    base_job = plan["jobs"][1]
    assert base_job["name"] == "import-base" and "--ntasks=1" in base_job["sbatch"]
    assert plan["compute"]["train_tokens"]["base"] == 0

    out = _demix("train", "--config", config)
    assert out.returncode == 0, out.stderr[-5000:]
    assert paths.tokenizer.read_bytes() == (hf_model / "tokenizer.json").read_bytes()  # prepare used DIR's tokenizer
    base = paths.checkpoint("base")
    assert read_tracker(base) == "release" and checkpoint_common(base)["hf_import"]["source"] == str(hf_model.resolve())
    assert not (paths.logs / "train" / "base").exists()  # no base was trained
    assert read_tracker(paths.checkpoint("code")) == 3
    losses = [r["loss"] for r in train_records(paths.logs / "train" / "code")]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))

    source = safetensors_of(hf_model)
    trained = safetensors_of(export_checkpoint(paths.checkpoint("code"), tmp_path / "code_hf"))
    assert sorted(trained) == sorted(source)
    moved = max((trained[k] - source[k]).abs().max().item() for k in source)
    assert 0 < moved < 1e-4, moved

    # The base stage is done: a re-run skips it, and a checkpoint that is not this import is never taken for it.
    assert model_complete(experiment, "base")
    assert import_base(experiment) == base
    with pytest.raises(ConfigError, match="not imported from model.from_hf"):
        import_base(experiment, paths.checkpoint("code"))
