"""The dtype names the project's settings and flags accept, in one registry (importing it does not import torch).

    torch_dtype("bf16")                       # torch.bfloat16
    Literal[("same", *dtype_names())]         # a config field's allowed values (merge.dtype)
    dtype_names(training=True)                # ("fp32", "bf16"): what training and evaluation run in

To add a dtype: one `Dtype` entry below; every setting and flag that lists dtypes takes it from here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dtype:
    name: str
    """The short name settings and flags use."""
    torch_name: str
    """torch's attribute (`torch.bfloat16`), also accepted where a user gives a dtype (model_args dtype=)."""
    computes: bool
    """Whether models run in it (training precision, evaluation): fp16 would need loss scaling, so it only stores."""


DTYPES: dict[str, Dtype] = {d.name: d for d in (
    Dtype("fp32", "float32", computes=True),
    Dtype("bf16", "bfloat16", computes=True),
    Dtype("fp16", "float16", computes=False),
)}


def dtype_names(*, computes: bool = False) -> tuple[str, ...]:
    """The registered names (`computes`: only those models run in)."""
    return tuple(name for name, d in DTYPES.items() if d.computes or not computes)


def torch_dtype(name: str):
    """The torch dtype of a registered name or of its torch spelling (`bf16` or `bfloat16`); ValueError listing them."""
    import torch

    for d in DTYPES.values():
        if name in (d.name, d.torch_name):
            return getattr(torch, d.torch_name)
    raise ValueError(f"dtype {name!r} is unknown; choose one of {', '.join(SPELLINGS)}")


SPELLINGS = tuple(n for d in DTYPES.values() for n in (d.name, d.torch_name))
"""Every name `torch_dtype` accepts."""
