"""Export: transformers' own model on the exported directory gives the megatron-core logits (Llama at TP=2 and
PP=2, Qwen3 at TP=2 x PP=2, GQA); a mixture exported from the components equals the export of the proxy merged
to disk, in merge.dtype; what Llama/Qwen cannot express, and an existing output, are refused before anything is
written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.hf.hf_helpers import hf_logits, megatron_logits, safetensors_of


@pytest.mark.parametrize("which, architecture", [("base", "LlamaForCausalLM"), ("code", "LlamaForCausalLM"),
                                                 ("qwen3", "Qwen3ForCausalLM")],
                         ids=["llama-tp2", "llama-pp2", "qwen3-tp2-pp2"])
def test_transformers_logits_equal_megatron(eval_experiment, qwen3_checkpoint, tmp_path, which, architecture):
    # Both fixtures named here (not fetched with request.getfixturevalue): the test then runs on the worker that
    # trained them (tests/conftest.py groups tests by the fixtures they name).
    import transformers

    from megatron_demix.experiment import checkpoint_experiment
    from megatron_demix.model.inference import load_for_inference
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.hf.export import export_checkpoint

    checkpoint = qwen3_checkpoint if which == "qwen3" else eval_experiment[1].paths.checkpoint(which)
    out = export_checkpoint(checkpoint, tmp_path / "hf", max_shard_bytes=300_000)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (4, 2, 512)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and all((out / f).is_file() for f in index["weight_map"].values())
    assert ("lm_head.weight" in index["weight_map"]) is not config["tie_word_embeddings"]

    experiment = checkpoint_experiment(checkpoint)
    model = load_for_inference(checkpoint, experiment.model, 512, dtype=torch.float32)
    expected = megatron_logits(model)
    got = hf_logits(out)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "def sum of the cat 12 + 3"
    assert tokenizer(text).input_ids == load_tokenizer(experiment.paths.tokenizer).tokenize(text)


def test_mixture_export_equals_export_of_merged_proxy(eval_experiment, tmp_path):
    from megatron_demix.hf.export import export_checkpoint, export_mixture

    config, experiment = eval_experiment
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"code": 0.3, "math": 0.7}))
    code, math = experiment.paths.checkpoint("code"), experiment.paths.checkpoint("math")
    merged = tmp_path / "proxy"
    result = subprocess.run([sys.executable, "tools/merge/run.py", "--inputs", f"{code}:0.3", f"{math}:0.7",
                             "--output", str(merged)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    streamed = safetensors_of(export_mixture(experiment, mixture, tmp_path / "streamed"))
    from_disk = safetensors_of(export_checkpoint(merged, tmp_path / "from_disk"))
    assert sorted(streamed) == sorted(from_disk)
    assert all(torch.equal(streamed[k], from_disk[k]) for k in streamed)
    # and the merge is not a copy of either input
    code_only = safetensors_of(export_checkpoint(code, tmp_path / "code"))
    assert not torch.equal(streamed["model.layers.0.mlp.up_proj.weight"], code_only["model.layers.0.mlp.up_proj.weight"])


def test_inexpressible_architectures_are_refused():
    from megatron_demix.config.base import build
    from megatron_demix.hf.config_map import ConversionError, check_exportable
    from megatron_demix.model.config import ModelConfig

    model = build(ModelConfig, {"normalization": "LayerNorm", "position_embedding_type": "learned_absolute"}, "model")
    with pytest.raises(ConversionError, match=r"model.normalization='LayerNorm'.*model.position_embedding_type='learned_absolute'"):
        check_exportable(model, "ckpt")
    check_exportable(build(ModelConfig, {"qk_layernorm": True}, "model"), "ckpt")


def test_cli_refuses_existing_output_and_bad_flags(eval_experiment, tmp_path, capsys):
    from megatron_demix.cli import main

    config, experiment = eval_experiment
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    cases = [
        (["--checkpoint", str(experiment.paths.checkpoint("base")), "--output", str(existing)], "already exists"),
        (["--experiment", str(config), "--output", str(tmp_path / "x")], "--mixture"),
        (["--checkpoint", str(tmp_path / "nothing"), "--output", str(tmp_path / "y")], "no such checkpoint"),
        (["--checkpoint", str(experiment.paths.checkpoint("base")), "--output", str(tmp_path / "z"),
          "--max-shard-size", "lots"], "--max-shard-size"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["export", *argv])
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_mixture_export_honours_merge_dtype(eval_experiment, tmp_path, capsys):
    from megatron_demix.cli import main
    from megatron_demix.hf.export import export_mixture

    config, experiment = eval_experiment
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"code": 0.4, "math": 0.6}))
    data = yaml.safe_load(config.read_text())
    data["merge"] = {"dtype": "bf16"}
    in_bf16 = tmp_path / "bf16.yaml"
    in_bf16.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--experiment", str(in_bf16), "--mixture", str(mixture), "--output", str(tmp_path / "bf16")])
    assert exit_.value.code == 0 and "wrote" in capsys.readouterr().out

    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    half = safetensors_of(tmp_path / "bf16")
    full = safetensors_of(export_mixture(experiment, mixture, tmp_path / "fp32"))  # merge.dtype same: stored fp32
    assert {t.dtype for t in full.values()} == {torch.float32} and {t.dtype for t in half.values()} == {torch.bfloat16}
    # the fp32 merge rounded once to bf16, as tools/merge/run.py --dtype bf16 writes it
    assert sorted(half) == sorted(full) and all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
