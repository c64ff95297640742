"""The `cluster:` section: where jobs run. Every site-specific value lives here, never in code."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig:
    """Executor choice and SLURM settings (each also overridable by sbatch flags or environment)."""

    executor: Literal["auto", "local", "slurm"] = "auto"
    """`auto`: SLURM when a cluster answers (`sinfo`), else the same job scripts run on this machine."""
    partition: str | None = None
    account: str | None = None
    time: str = "01:00:00"
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    container_image: str | None = None
    """Pyxis/enroot image (srun --container-image), when the site uses containers."""
    extra_sbatch_args: list[str] = field(default_factory=list)
