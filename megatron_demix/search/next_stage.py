"""The answer in the form the next training stage takes, written next to final_mixture.json.

    search/data_path.txt      Megatron-LM's `--data-path` value: "w1 prefix1 w2 prefix2 ..." (beta general +
                              (1 - beta) x the mixture; shares of 0 left out), for pretrain_gpt.py
    search/data_args.txt      the same list one pair a line, for Megatron-LM's `--data-args-path`
    search/final_run.jsonl    the final model as a mixture run (training/mixture_runs.py) for this project's trainer

and `answer["next_stage"]` holds the paths and the one command that trains the final model with the
project's trainer (from the base, like a component, on the blend), locally and as a SLURM job.
"""
from __future__ import annotations

import math
import shlex

from megatron_demix.runtime.files import atomic_write_text
from megatron_demix.training.mixture_runs import MixtureRun, write_mixture_runs

FINAL_MODEL = "final-mixture"


def blend(experiment, answer: dict) -> list[tuple[float, str]]:
    """(weight, Megatron dataset prefix) of every dataset with a positive share of the next stage's blend."""
    return [(share, str(experiment.paths.dataset_prefix(name))) for name, share in answer["effective_shares"].items()
            if share > 0]


def final_iterations(experiment) -> int:
    """The final model's iterations: the next stage's `search.target_tokens` when set, else a component's budget."""
    tokens = experiment.search.target_tokens
    if tokens is None:
        return experiment.training.train_iters
    return max(1, math.ceil(tokens / (experiment.training.global_batch_size * experiment.model.seq_length)))


def write_next_stage(paths, experiment, answer: dict, config_path: str) -> None:
    pairs = blend(experiment, answer)
    data_path = " ".join(f"{weight:.6g} {shlex.quote(prefix)}" for weight, prefix in pairs)
    atomic_write_text(paths.root / "data_path.txt", data_path + "\n")
    atomic_write_text(paths.root / "data_args.txt", "".join(f"{weight:.6g} {prefix}\n" for weight, prefix in pairs))
    runs = paths.root / "final_run.jsonl"
    write_mixture_runs(runs, [MixtureRun(FINAL_MODEL, answer["mixture"], final_iterations(experiment),
                                         str(experiment.paths.checkpoint(FINAL_MODEL)))])
    config = shlex.quote(str(config_path))
    answer["next_stage"] = {
        "data_path": str(paths.root / "data_path.txt"),
        "data_args_path": str(paths.root / "data_args.txt"),
        "megatron_lm_flags": f"--data-args-path {shlex.quote(str(paths.root / 'data_args.txt'))}",
        "train_command": f"torchrun --nproc-per-node 1 -m megatron_demix.commands.train --config {config} "
                         f"--mixture-runs {shlex.quote(str(runs))} --component 0",
        "sbatch_command": f"sbatch --array=0 slurm/train_component.sh {config} --mixture-runs {shlex.quote(str(runs))}",
        "train_iters": final_iterations(experiment),
    }
