"""The merge's method, dtype and schedule names: the config's choices (flags, docs, validation) are the registries'.

MergeConfig takes the method and dtype choices from their registries (merge/methods.py, runtime/dtypes.py:
both readable without torch); the schedules are still listed as a `Literal` (their module reads checkpoints),
so this test keeps those two lists from drifting apart."""
from typing import get_args, get_type_hints

from megatron_demix.eval.config import EvalConfig
from megatron_demix.merge.config import MergeConfig
from megatron_demix.merge.methods import METHODS
from megatron_demix.merge.run_average import SCHEDULES
from megatron_demix.runtime.dtypes import DTYPES, dtype_names, torch_dtype
from megatron_demix.training.config import TrainingConfig


def test_config_choices_are_the_registered_methods_and_dtypes():
    import torch

    hints = get_type_hints(MergeConfig)
    assert list(get_args(hints["method"])) == list(METHODS)
    assert list(get_args(hints["dtype"])) == ["same", *DTYPES]
    assert list(get_args(hints["schedule"])) == list(SCHEDULES)
    # Models run in the dtypes marked so (fp16 only stores): training precision and evaluation take those.
    for config, field in ((TrainingConfig, "precision"), (EvalConfig, "dtype")):
        assert list(get_args(get_type_hints(config)[field])) == ["auto", *dtype_names(computes=True)] == ["auto", "fp32", "bf16"]
    assert [torch_dtype(name) for name in DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    assert torch_dtype("bfloat16") is torch.bfloat16
