"""The `cluster:` section: where jobs run and what each stage's jobs ask for. Site values live here.

    cluster:
      executor: slurm
      partition: gpu                 # shared defaults: every stage's jobs get these ...
      account: my-project
      stages:                        # ... unless its own entry says otherwise
        prepare: {cpus_per_task: 32, time: "12:00:00", partition: cpu}
        train:   {nodes: 8, ntasks_per_node: 8, gpus_per_node: 8, cpus_per_task: 8, time: "48:00:00"}
        merge:   {ntasks_per_node: 8, cpus_per_task: 2, mem: 64G, time: "01:00:00", partition: cpu}
        eval:    {gpus_per_node: 1, cpus_per_task: 8, time: "02:00:00"}
        search:  {cpus_per_task: 4, time: "72:00:00", partition: cpu}

A key left unset everywhere is not passed to sbatch, so the job script's own `#SBATCH` line
(e.g. `--time` in slurm/train_component.sh) applies: the experiment overrides a script only where
it says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Literal

from megatron_demix.config.base import fail

STAGES = ("prepare", "train", "merge", "eval", "search")
"""Pipeline stages whose jobs can each get their own resources (JobSpec.stage)."""

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_MEM = re.compile(r"^\d+[KMGT]?$")


@dataclass(frozen=True, kw_only=True, slots=True)
class StageResources:
    """What one stage's SLURM jobs ask for; a key left unset falls back to the shared default."""

    nodes: int | None = None
    """Nodes per job (array task) (sbatch --nodes)."""
    ntasks_per_node: int | None = None
    """Processes per node, one per GPU for training (sbatch --ntasks-per-node). With `nodes` it fixes the
    job's rank count: nodes x ntasks_per_node."""
    gpus_per_node: int | None = None
    """sbatch --gpus-per-node."""
    cpus_per_task: int | None = None
    """CPU cores per process (sbatch --cpus-per-task); dataloader and tokenizer workers use them."""
    mem: str | None = None
    """Memory per node, e.g. 64G (sbatch --mem)."""
    time: str | None = None
    """Wall-clock limit, e.g. 48:00:00 or 2-00:00:00 (sbatch --time)."""
    partition: str | None = None
    """sbatch --partition."""
    account: str | None = None
    """sbatch --account."""
    extra_sbatch_args: list[str] = field(default_factory=list)
    """More sbatch flags, e.g. ["--qos=high", "--exclusive"]; the shared ones come first, a stage's after."""

    def __post_init__(self):
        for name in ("nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "gpus_per_node" else 1):
                fail(name, f"{value} must be >= {0 if name == 'gpus_per_node' else 1}")
        if self.time is not None and not _TIME.match(self.time):
            fail("time", f"{self.time!r} is not a SLURM time (e.g. 48:00:00, 2-00:00:00, 30)")
        if self.mem is not None and not _MEM.match(self.mem):
            fail("mem", f"{self.mem!r} is not a SLURM memory size (e.g. 64G, 8000M)")
        for arg in self.extra_sbatch_args:
            if not arg.startswith("-"):
                fail("extra_sbatch_args", f"{arg!r} is not a flag: write each as --name=value")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig(StageResources):
    """Executor choice, the shared resource defaults (the keys above), and per-stage resources."""

    executor: Literal["auto", "local", "slurm"] = "auto"
    """`auto`: SLURM when a cluster answers (`sinfo`), else the same job scripts run on this machine."""
    container_image: str | None = None
    """Pyxis/enroot image (srun --container-image), when the site uses containers."""
    stages: dict[str, StageResources] = field(default_factory=dict)
    """Resources per stage (prepare, train, merge, eval, search), over the shared defaults."""

    def __post_init__(self):
        StageResources.__post_init__(self)
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            fail("stages", f"unknown stage(s) {', '.join(unknown)}: stages are {', '.join(STAGES)}")

    def resources(self, stage: str | None) -> StageResources:
        """The resources of `stage`'s jobs: its own keys over the shared defaults (None: the defaults)."""
        if stage is not None and stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: stages are {', '.join(STAGES)}")
        own = self.stages.get(stage) if stage else None
        if own is None:
            own = StageResources()
        merged = {f.name: getattr(own, f.name) if getattr(own, f.name) is not None else getattr(self, f.name)
                  for f in fields(StageResources) if f.name != "extra_sbatch_args"}
        return StageResources(**merged, extra_sbatch_args=[*self.extra_sbatch_args, *own.extra_sbatch_args])

    def ranks(self, stage: str, default: int) -> int:
        """Processes of one `stage` job: nodes (default 1) x ntasks_per_node when that is set, else `default`."""
        r = self.resources(stage)
        return (r.nodes or 1) * r.ntasks_per_node if r.ntasks_per_node else default
