"""Merge methods: how one region of the inputs becomes one region of the output.

    method = get_method("linear")
    out = method.combine(read, weights, scale=1.0, base=None)   # read(i) -> input i's region, fp32

A method only sees one region at a time (a stored chunk, or part of one), so it must be
element-wise: the result of a region must not depend on any other region. Linear and task
arithmetic are; magnitude pruning (TIES, DELLA) and random masks (DARE) are not and would need a
whole-tensor pass. Accumulation is in fp32, one input at a time (peak: two fp32 regions).

Arithmetic order is fixed and documented, so a test can recompute the result bit for bit:
    linear:           acc = w_0*T_0; acc = acc + w_1*T_1; ...
    task_arithmetic:  acc = w_0*(T_0-B); acc = acc + w_1*(T_1-B); ...; out = B + scale*acc
Each product and sum is a separate, correctly rounded fp32 operation (no fused multiply-add),
so the result does not depend on how a tensor was cut into chunks.

To add a method: write a `combine` function and `register` it below.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # the registry's names are read by the `merge:` config without importing torch
    import torch

Read = Callable[[int], "torch.Tensor"]
"""read(i): input i's region as a fresh fp32 tensor the method may modify in place."""


@dataclass(frozen=True)
class Method:
    name: str
    combine: Callable[..., torch.Tensor]
    """combine(read, weights, *, scale, base) -> fp32 tensor."""
    needs_base: bool
    """Whether `--base` is required (task vectors are differences to a base)."""
    allows_negative_weights: bool
    """Negative task-vector weights subtract a skill; a negative mixture weight is a mistake."""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--method {name!r} is unknown{hint}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _weighted_sum(read: Read, weights: Sequence[float], base: torch.Tensor | None) -> torch.Tensor:
    acc = None
    for i, weight in enumerate(weights):
        term = read(i)
        if base is not None:
            term.sub_(base)
        term.mul_(weight)
        acc = term if acc is None else acc.add_(term)
        del term  # frees input i before input i+1 is read
    return acc


def _linear(read: Read, weights: Sequence[float], *, scale: float, base: torch.Tensor | None) -> torch.Tensor:
    return _weighted_sum(read, weights, None)


def _task_arithmetic(read: Read, weights: Sequence[float], *, scale: float, base: torch.Tensor | None) -> torch.Tensor:
    acc = _weighted_sum(read, weights, base)
    return acc.mul_(scale).add_(base)


register(Method("linear", _linear, needs_base=False, allows_negative_weights=False))
register(Method("task_arithmetic", _task_arithmetic, needs_base=True, allows_negative_weights=True))
