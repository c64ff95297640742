"""Models trained from the base on a mixture of the candidates: reference models and trained proxies.

    write_mixture_runs(path, [MixtureRun("ref-000", {"code": 0.3, "math": 0.7}, 200, "/w/validate/models/ref-000")])
    torchrun -m megatron_demix.commands.train --config X --mixture-runs runs.jsonl --component 0    # array task 0 trains line 0

One JSON object per line. Each trains like a component (same trainer, same starting point: the
base), on beta general + (1 - beta) x its mixture (data/datasets.py `blend_for`), for its own
iteration budget, saving to its own directory; `slurm/train_component.sh X --mixture-runs runs.jsonl`
as an array trains them all.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_demix.config.base import ConfigError
from megatron_demix.runtime.files import atomic_write_text


@dataclass(frozen=True)
class MixtureRun:
    id: str
    """Names the model (its checkpoint's `model_name`, its training log directory)."""
    mixture: dict[str, float]
    """{candidate: share}, summing to 1."""
    train_iters: int
    save: str
    """Its save root (iter_*/, latest_checkpointed_iteration.txt)."""
    seed: int | None = None
    """Data-order seed in place of training.seed (a replicate of another run: same mixture, other order)."""


def write_mixture_runs(path: Path, runs: list[MixtureRun]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(asdict(r)) + "\n" for r in runs))


def read_mixture_runs(path: Path) -> list[MixtureRun]:
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return [MixtureRun(**json.loads(line)) for line in lines]
    except OSError as error:
        raise ConfigError(f"--mixture-runs {path}: cannot read it ({error.strerror})") from None
    except (json.JSONDecodeError, TypeError) as error:
        raise ConfigError(f"--mixture-runs {path}: each line must be {{\"id\", \"mixture\", \"train_iters\", \"save\"[, \"seed\"]}} ({error})") from None


def select_mixture_run(path: Path, component: str) -> MixtureRun:
    """The run named by `component`: its id, or its line index (the SLURM array task id)."""
    runs = read_mixture_runs(path)
    for index, run in enumerate(runs):
        if component in (run.id, str(index)):
            return run
    raise ConfigError(f"--component {component!r}: not an id or a line index 0..{len(runs) - 1} of --mixture-runs {path}")
