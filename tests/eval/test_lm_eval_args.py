"""`demix-lm-eval` keeps the exit-code contract: a bad model_arg is one line and exit status 2; an unknown one is
refused with the closest valid name; a truncated `.distcp` is named with the byte offset it lacks (no EOFError)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_demix.checkpoint.torch_dist import CheckpointDataError
from megatron_demix.eval.config import EvalInputError
from tests.conftest import REPO


def test_misspelled_model_arg_exits_2_with_the_closest_name():
    result = subprocess.run(
        [sys.executable, "-m", "megatron_demix.commands.lm_eval", "--model", "megatron-demix",
         "--model_args", "pretrained=/nonexistent,dtpye=bf16", "--tasks", "arc_easy"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert line == "demix-lm-eval: error: model_args dtpye=: unknown argument of megatron-demix; did you mean dtype=?"


@pytest.mark.parametrize("args, message", [
    ({"batch_sise": 2}, r"batch_sise=: unknown argument of megatron-demix; did you mean batch_size=\?"),
    ({"colour": 1}, r"colour=: unknown argument .*valid: pretrained, components"),
])
def test_unknown_model_args_are_refused_before_loading(args, message):
    from megatron_demix.commands.lm_eval import MegatronDemixLM

    with pytest.raises(EvalInputError, match=message):
        MegatronDemixLM(pretrained="/nonexistent", **args)


@pytest.mark.parametrize("args, message", [
    ({"batch_size": "auto"}, r"batch_size='auto': give a positive integer"),
    ({"max_length": "long"}, r"max_length='long': give a positive integer"),
    ({"kv_cache": "maybe"}, r"kv_cache='maybe': give true or false"),
])
def test_bad_settings_name_the_argument(args, message):
    from megatron_demix.eval.model import GPTModelLM

    experiment = type("Experiment", (), {"model": type("Model", (), {"seq_length": 8})()})()
    with pytest.raises(EvalInputError, match=message):
        GPTModelLM(torch.nn.Linear(1, 1), None, experiment, **args)


@pytest.mark.parametrize("value, message", [("fp8", r"dtype='fp8': choose one of auto"),
                                            ('{"code": ', r"mixture='\{\"code\": ': not a JSON object")])
def test_bad_weights_args_name_the_argument(value, message):
    from megatron_demix.commands.lm_eval import build_from_args

    args = {"dtype": value, "pretrained": "/nonexistent"} if value == "fp8" else {"mixture": value, "experiment": "x.yaml"}
    with pytest.raises(EvalInputError, match=message):
        build_from_args(**args)


def test_truncated_distcp_is_named_with_the_offset(tmp_path):
    from megatron_demix.commands.lm_eval import MegatronDemixLM

    directory = tmp_path / "ckpt" / "iter_0000001"
    dcp.save({"embedding.word_embeddings.weight": torch.randn(64, 32)}, checkpoint_id=directory, no_dist=True)
    (directory / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1}))
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("1")
    data = next(directory.glob("*.distcp"))
    size = data.stat().st_size
    os.truncate(data, size // 2)
    with pytest.raises(CheckpointDataError, match=rf"{data}: ends at byte {size // 2}, but key embedding.word_embeddings.weight"
                                                  rf" is stored up to byte offset \d+; the checkpoint is truncated"):
        MegatronDemixLM(pretrained=str(tmp_path / "ckpt"))
