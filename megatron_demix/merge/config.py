"""The `merge:` section: how proxies are made from the component checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_demix.config.base import require_at_least
from megatron_demix.merge.methods import METHODS
from megatron_demix.runtime.dtypes import dtype_names

MethodName = Literal[tuple(METHODS)]
"""A registered merge method (merge/methods.py)."""
OutputDtype = Literal[("same", *dtype_names())]
"""`same` or a registered dtype (runtime/dtypes.py)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MergeConfig:
    """Defaults for `tools/merge/run.py` and for the proxies the search builds."""

    method: MethodName = "linear"
    """`linear`: sum_i w_i * Theta_i. `task_arithmetic`: base + scale * sum_i w_i (Theta_i - base)."""
    scale: float = 1.0
    """Task-arithmetic scale."""
    dtype: OutputDtype = "same"
    """Output dtype of proxies: the merge's torch_dist files and the Hugging Face safetensors of `demix export
    --experiment` and eval.command's {hf_checkpoint} (config.json's `dtype` says which); `same` keeps each
    input tensor's dtype. Accumulation is always fp32."""
    normalize: bool = True
    """Rescale weights to sum 1."""
    ranks: int = 2
    """MPI ranks of a merge job (mpiexec -n / srun -n)."""
    extra_state_source: int = 1
    """Which input (1 = the first) the objects that are copied, not averaged, come from: Transformer Engine
    `_extra_state`, RNG state, the common state."""

    # Checkpoint averaging along one run (tools/merge/run.py --run-dir).
    schedule: Literal["uniform", "linear", "minus-sqrt"] = "uniform"
    """Weights of a run's checkpoints, oldest first: `uniform` 1/n each; `linear` and `minus-sqrt` emulate that
    learning-rate decay over the window (WSM, arXiv:2507.17634): c_i = g(i/n) - g((i+1)/n), c_(n-1) = g((n-1)/n),
    g(x) = 1-x (equal weights again) or 1-sqrt(x). Formulas and sources: megatron_demix/merge/run_average.py."""
    min_iteration_interval: int = 0
    """Keep only checkpoints at least this many iterations apart, walking back from the newest selected one."""

    def __post_init__(self):
        require_at_least(self, 1, "ranks", "extra_state_source")
        require_at_least(self, 0, "min_iteration_interval")
