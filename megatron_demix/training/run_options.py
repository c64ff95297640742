"""What one training launch trains and where: the iteration budget and paths of the base or a component.

Apart from the trainer (and free of torch), so that the pipeline, `demix status` and the launcher can
tell whether a model is complete without importing torch and megatron-core (seconds per process).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from megatron_demix.checkpoint.layout import read_tracker, resolve_checkpoint
from megatron_demix.config.base import ConfigError


def resolve_model(experiment, component: str) -> str:
    """`base`, a candidate name, or a candidate index (SLURM array task id) -> model name."""
    names = [d.name for d in experiment.candidates]
    if component == "base" or component in names:
        return component
    if component.isdigit() and int(component) < len(names):
        return names[int(component)]
    raise ConfigError(
        f"--component {component!r}: expected 'base', a candidate name ({', '.join(names)})"
        f" or an index 0..{len(names) - 1}"
    )


def train_iters_for(experiment, model_name: str) -> int:
    """The iteration budget: base_train_iters for the base (0 when it is imported, `model.from_hf`);
    train_tokens (rounded up) or train_iters for a component."""
    training = experiment.training
    if model_name == "base":
        return 0 if experiment.model.from_hf else training.base_train_iters
    if training.train_tokens is not None:
        return math.ceil(training.train_tokens / (training.global_batch_size * experiment.model.seq_length))
    return training.train_iters


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What one launch trains and where it writes (the command line's side; the rest is the experiment)."""

    model_name: str
    """`base` or a candidate name."""
    save: Path
    load: Path | None
    """Resume from the latest checkpoint here when one exists (usually the same as `save`)."""
    pretrained: Path | None
    """Weights to start from when there is nothing to resume (the base, for a component)."""
    train_iters: int
    log_dir: Path
    stop_after_iters: int | None = None
    """Leave after this iteration without saving, as a preemption would (tests, drills)."""
    exit_signal_handler: bool = False
    """On SIGTERM (preemption, scancel, time limit), save after the current iteration and exit 0."""
    mixture: dict[str, float] | None = None
    """Train on beta general + (1 - beta) x this mixture of candidates instead of the model's own blend."""

    @classmethod
    def defaults(cls, experiment, model_name: str, **changes) -> "RunOptions":
        """The experiment's paths for `model_name`; `changes` that are not None replace them (`load` follows `save`)."""
        paths = experiment.paths
        save = changes.get("save") or paths.checkpoint(model_name)
        options = cls(
            model_name=model_name,
            save=save,
            load=save,
            pretrained=None if model_name == "base" else paths.checkpoint("base"),
            train_iters=train_iters_for(experiment, model_name),
            log_dir=paths.logs / "train" / model_name,
        )
        return dataclasses.replace(options, **{k: v for k, v in changes.items() if v is not None})


def already_trained(run: RunOptions) -> int | None:
    """The iteration its save root already holds when that reaches `run.train_iters` (resuming there would
    train nothing), else None. A damaged checkpoint there is the CheckpointError a resume would give."""
    iteration = read_tracker(run.save) if run.load == run.save else None
    if not (isinstance(iteration, int) and iteration >= run.train_iters):
        return None
    resolve_checkpoint(run.save)
    return iteration
