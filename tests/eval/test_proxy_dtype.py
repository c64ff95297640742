"""merge.dtype reaches every way of making a proxy: merge-on-load scores exactly the proxy `tools/merge/run.py` writes.

Both go through merge/proxy.py (`Proxy.open` / `Proxy.write`); before it, only the Hugging Face export honoured
merge.dtype, so an in-memory proxy was the fp32-accumulated merge cast to the components' dtype, not to bf16."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from lm_eval.api.instance import Instance

from tests.conftest import REPO

PAIRS = [("def add ( a , b ) :", " return a + b"), ("The cat sat on", " the mat"), ("3 + 4 =", " 7")]


def _loglikelihoods(lm) -> list[tuple[float, bool]]:
    return lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)], disable_tqdm=True)


def test_merge_on_load_in_bf16_scores_the_proxy_the_merge_tool_writes(eval_experiment, mpiexec, tmp_path):
    from megatron_demix.config.base import replace
    from megatron_demix.commands.lm_eval import MegatronDemixLM
    from megatron_demix.experiment import dump_experiment
    from megatron_demix.merge.sources import read_tensor

    _, experiment = eval_experiment
    config = tmp_path / "bf16.yaml"
    dump_experiment(replace(experiment, merge=replace(experiment.merge, dtype="bf16")), config)
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"code": 0.3, "math": 0.7}))

    proc = mpiexec(2, [sys.executable, REPO / "tools" / "merge" / "run.py", "--config", config, "--mixture", mixture,
                       "--output", tmp_path / "proxy"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = read_tensor(tmp_path / "proxy", "decoder.final_layernorm.weight")
    assert written.dtype == torch.bfloat16  # the tool wrote merge.dtype

    on_disk = MegatronDemixLM(pretrained=tmp_path / "proxy", experiment=config, dtype="fp32", batch_size=4)
    merged = MegatronDemixLM(experiment=config, mixture=str(mixture), dtype="fp32", batch_size=4)
    for name, parameter in on_disk.model.named_parameters():
        assert torch.equal(parameter, dict(merged.model.named_parameters())[name]), name
    assert _loglikelihoods(merged) == _loglikelihoods(on_disk)

    # The same mixture merged in the components' own dtype (fp32) is another model: the dtype did something.
    same = MegatronDemixLM(experiment=str(eval_experiment[0]), mixture=str(mixture), dtype="fp32", batch_size=4)
    assert [s for s, _ in _loglikelihoods(same)] != [s for s, _ in _loglikelihoods(merged)]
    norm = merged.model.decoder.final_layernorm.weight
    assert torch.equal(norm, norm.bfloat16().float()) and not torch.equal(norm, same.model.decoder.final_layernorm.weight)
