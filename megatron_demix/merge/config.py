"""The `merge:` section: how proxies are made from the component checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_demix.config.base import require_at_least


@dataclass(frozen=True, kw_only=True, slots=True)
class MergeConfig:
    """Defaults for `tools/merge/run.py` and for the proxies the search builds."""

    method: Literal["linear", "task_arithmetic"] = "linear"
    """`linear`: sum_i w_i * Theta_i. `task_arithmetic`: base + scale * sum_i w_i (Theta_i - base)."""
    scale: float = 1.0
    """Task-arithmetic scale."""
    dtype: Literal["same", "fp32", "bf16", "fp16"] = "same"
    """Output dtype; `same` keeps each input tensor's dtype. Accumulation is always fp32."""
    normalize: bool = True
    """Rescale weights to sum 1."""
    ranks: int = 2
    """MPI ranks of a merge job (mpiexec -n / srun -n)."""

    def __post_init__(self):
        require_at_least(self, 1, "ranks")
