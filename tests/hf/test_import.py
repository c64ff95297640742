"""Import: a Hugging Face model made here by `transformers` (random weights; Llama, Qwen2 and Qwen3 configs,
GQA) imported at TP=2 gives the `transformers` logits in megatron-core; exported back it is bit-identical;
training continues from it; unsupported models and an existing output are refused."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from tests.hf.hf_helpers import hf_logits, make_hf_model, megatron_logits, safetensors_of


@pytest.mark.parametrize("model_type, tied", [("llama", False), ("qwen2", True), ("qwen3", True)])
def test_import_gives_transformers_logits_and_exports_back_identically(eval_experiment, tmp_path, model_type, tied):
    from megatron_demix.checkpoint.weights import load_weights
    from megatron_demix.model.inference import inference_model
    from megatron_demix.hf.export import checkpoint_architecture, export_checkpoint
    from megatron_demix.hf.import_hf import import_hf

    _, experiment = eval_experiment
    source = make_hf_model(tmp_path / "hf", experiment.paths.tokenizer, model_type, tied)
    # padding 512 -> 768 rows (multiple of 384 x TP 2): export must cut them again
    save = import_hf(source, tmp_path / "megatron", tensor_parallel=2, make_vocab_size_divisible_by=384)
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "release"

    model_config, _ = checkpoint_architecture(save)
    assert (model_config.qk_layernorm, model_config.add_qkv_bias) == (model_type == "qwen3", model_type == "qwen2")
    model = inference_model(model_config, 512, dtype=torch.float32)
    load_weights(save, model)
    torch.testing.assert_close(megatron_logits(model), hf_logits(source), rtol=0, atol=2e-5)

    back = export_checkpoint(save, tmp_path / "back")
    original, exported = safetensors_of(source), safetensors_of(back)
    assert sorted(original) == sorted(exported)
    assert all(torch.equal(original[k], exported[k]) for k in original)
    config = json.loads((back / "config.json").read_text())
    assert config["model_type"] == model_type and config["rms_norm_eps"] == 1e-6
    assert config["rope_parameters"]["rope_theta"] == 50000.0


def test_training_continues_from_an_imported_model(eval_experiment, tmp_path):
    from megatron_demix.hf.import_hf import import_hf
    from tests.training.train_helpers import check, torchrun, train_records

    config, experiment = eval_experiment
    source = make_hf_model(tmp_path / "hf", experiment.paths.tokenizer, "llama", tied=False)
    save = import_hf(source, tmp_path / "megatron")
    data = yaml.safe_load(config.read_text())
    data["model"] = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 96, "num_attention_heads": 4,
                     "num_query_groups": 2, "kv_channels": 16, "seq_length": 64, "max_position_embeddings": 128,
                     "rotary_base": 50000, "layernorm_epsilon": 1e-6, "untie_embeddings_and_output_weights": True}
    resumed = tmp_path / "from_hf.yaml"
    resumed.write_text(yaml.safe_dump(data, sort_keys=False))
    logs = tmp_path / "logs"
    check(torchrun(1, "--config", resumed, "--component", "code", "--pretrained-checkpoint", save,
                   "--save", tmp_path / "trained", "--log-dir", logs, "--train-iters", 4))
    losses = [r["loss"] for r in train_records(logs)]
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


def test_bad_hf_inputs_are_refused(eval_experiment, tmp_path, capsys):
    from megatron_demix.cli import main

    _, experiment = eval_experiment
    source = make_hf_model(tmp_path / "hf", experiment.paths.tokenizer, "llama", tied=True)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    scaled = tmp_path / "scaled"
    shutil.copytree(source, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (scaled / "config.json").write_text(json.dumps(config))
    existing = tmp_path / "exists"
    existing.mkdir()
    cases = [
        (["--model", str(gpt2), "--save", str(tmp_path / "a")], "model_type 'gpt2' cannot be imported; supported: llama, qwen2, qwen3"),
        (["--model", str(scaled), "--save", str(tmp_path / "b")], "rope_parameters"),
        (["--model", str(tmp_path / "none"), "--save", str(tmp_path / "c")], "no such directory"),
        (["--model", str(tmp_path / "exists"), "--save", str(tmp_path / "c")], "no config.json"),
        (["--model", str(source), "--save", str(existing)], "already exists"),
        (["--model", str(source), "--save", str(tmp_path / "d"), "--tensor-model-parallel-size", "3"],
         "--tensor-model-parallel-size 3 must divide"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["import-hf", *argv])
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "gpt2", "hf", "scaled"]
