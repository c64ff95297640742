"""Checkpoint averaging along one training run: pick a run's `iter_*` checkpoints and weigh them by a schedule.

    iterations = select_iterations(save_root, start=600, end=1000, min_interval=200)   # [600, 800, 1000]
    weights = schedule_weights("minus-sqrt", len(iterations))                          # oldest first, sum 1
    python tools/merge/run.py --run-dir SAVE_ROOT --start-iteration 600 --schedule minus-sqrt --output OUT

The selected checkpoints then go through `merge()` like any mixture (same planner, same ranks).

Schedules (`SCHEDULES`, a registry: `register_schedule` adds one). Checkpoints 0..n-1, oldest first:
- `uniform`: c_i = 1/n, the plain mean of the checkpoints (NeMo's checkpoint averaging, LAWA).
- the decay schedules, after the WSM paper (Tian et al. 2025, "WSM: Decay-Free Learning Rate Schedule
  via Checkpoint Merging for LLM Pre-training", arXiv:2507.17634) and Megatron-LM's
  `tools/checkpoint/weighted_merge.py` range mode: with theta_i = theta_0 + u_1 + ... + u_i, the
  merge sum_i c_i theta_i applies update k with the factor s_k = c_k + ... + c_{n-1}, so a merge
  emulates decaying the learning rate along the window with a decay function g (g(0) = 1) when
  s_k = g(k/n). Hence c_i = g(i/n) - g((i+1)/n) for i < n-1 and c_{n-1} = g((n-1)/n) (sum: g(0) = 1).
  - `linear`: g(x) = 1 - x, which gives c_i = 1/n: a linear decay is the uniform mean (the paper's
    observation; kept under its own name, computed by the formula above).
  - `minus-sqrt`: g(x) = 1 - sqrt(x) (the 1-sqrt cooldown of Hagele et al. 2024), so
    c_i = sqrt((i+1)/n) - sqrt(i/n) and c_{n-1} = 1 - sqrt((n-1)/n): the oldest checkpoint weighs most.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Callable

from megatron_demix.checkpoint.layout import iteration_dirs
from megatron_demix.merge.io import MergeInputError

SCHEDULES: dict[str, Callable[[int], list[float]]] = {}
"""Schedule name -> weights(n): n coefficients, oldest checkpoint first, summing to 1."""


def register_schedule(name: str):
    def add(weights: Callable[[int], list[float]]):
        if name in SCHEDULES:
            raise ValueError(f"schedule {name!r} is already registered")
        SCHEDULES[name] = weights
        return weights
    return add


def _from_decay(decay: Callable[[float], float]) -> Callable[[int], list[float]]:
    """Coefficients that emulate the learning-rate decay `decay` over the window (see the module docstring)."""
    def weights(n: int) -> list[float]:
        return [decay(i / n) - decay((i + 1) / n) for i in range(n - 1)] + [decay((n - 1) / n)]
    return weights


@register_schedule("uniform")
def _uniform(n: int) -> list[float]:
    return [1 / n] * n


register_schedule("linear")(_from_decay(lambda x: 1 - x))
register_schedule("minus-sqrt")(_from_decay(lambda x: 1 - math.sqrt(x)))


def schedule_weights(name: str, n: int) -> list[float]:
    """The `name` schedule's coefficients for n checkpoints, oldest first."""
    if name not in SCHEDULES:
        close = difflib.get_close_matches(name, list(SCHEDULES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MergeInputError(f"--schedule {name!r} is unknown{hint}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](n)


def select_iterations(save: Path, *, start: int | None = None, end: int | None = None, min_interval: int = 0) -> list[int]:
    """The iterations of `save`'s `iter_*` checkpoints in [start, end] (default: all), oldest first.

    With `min_interval`, walking back from `end`, a checkpoint is kept only if it is at least that
    many iterations before the last one kept, so `end` is always in (as Megatron-LM's range mode).
    """
    found = list(iteration_dirs(save))
    if not found:
        raise MergeInputError(f"--run-dir {save}: no iter_* checkpoints in it; give the save root of a training run")
    end = found[-1] if end is None else end
    if end not in found:
        raise MergeInputError(f"--end-iteration {end}: {save} has no iter_{end:07d} (it has {_listing(found)})")
    start = found[0] if start is None else start
    if start > end:
        raise MergeInputError(f"--start-iteration {start} is after --end-iteration {end}")
    kept: list[int] = []
    for iteration in reversed([it for it in found if start <= it <= end]):
        if not kept or kept[-1] - iteration >= min_interval:
            kept.append(iteration)
    return kept[::-1]


def _listing(iterations: list[int]) -> str:
    shown = ", ".join(map(str, iterations[:8]))
    return shown + (f", ... {iterations[-1]}" if len(iterations) > 8 else "")


def average_run(run_dir: str | Path, output: str | Path, settings=None, *, start_iteration: int | None = None,
                end_iteration: int | None = None, output_iteration: int | str | None = None, comm=None,
                log: Callable[[str], None] | None = None, **merge_options):
    """Merge the checkpoints of one run (`select_iterations`) with the schedule's weights; returns merge()'s Summary.

    Call it on every rank, like `merge()`. `settings` (a MergeConfig, default its defaults) gives the
    schedule, min_iteration_interval, dtype, ...; the weights are the schedule's, never renormalised.
    The output is named after the newest selected checkpoint unless `output_iteration` is given;
    `merge_options` go to `merge()` (verify, overwrite).
    """
    from megatron_demix.checkpoint.layout import iteration_dir
    from megatron_demix.config.base import replace
    from megatron_demix.merge import mpi
    from megatron_demix.merge.config import MergeConfig
    from megatron_demix.merge.engine import merge

    settings = settings or MergeConfig()
    schedule, min_iteration_interval = settings.schedule, settings.min_iteration_interval

    comm = comm or mpi.world()
    log = log or (lambda line: print(line, flush=True))
    iterations = select_iterations(Path(run_dir), start=start_iteration, end=end_iteration, min_interval=min_iteration_interval)
    weights = schedule_weights(schedule, len(iterations))
    if comm.rank == 0:
        log(f"[merge] {run_dir}: {len(iterations)} checkpoint(s), {schedule} weights: "
            + ", ".join(f"{it}:{w:.4g}" for it, w in zip(iterations, weights)))
    return merge(
        [iteration_dir(run_dir, it) for it in iterations], weights, output, replace(settings, normalize=False),
        output_iteration=iterations[-1] if output_iteration is None else output_iteration,
        provenance={"run_dir": str(Path(run_dir).resolve()), "schedule": schedule, "iterations": iterations},
        comm=comm, log=log, **merge_options,
    )
