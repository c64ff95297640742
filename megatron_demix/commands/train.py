"""Train the base or one component model of a DeMix experiment (megatron-core, TP/PP/DP).

    # one machine, 2 processes, tensor parallel 2 (launch/train_component.py: the same, from a checkout)
    torchrun --nproc-per-node 2 -m megatron_demix.commands.train --config configs/demo.yaml --component base \
        --tensor-model-parallel-size 2
    # component 0 (the first candidate), from the base checkpoint, pipeline parallel 2
    torchrun --nproc-per-node 2 -m megatron_demix.commands.train --config configs/demo.yaml --component 0 \
        --pipeline-model-parallel-size 2
    # under SLURM: slurm/train_component.sh (srun sets the rank layout)
    # a model on a mixture, from the base (line 0 of a runs file; training/mixture_runs.py)
    torchrun --nproc-per-node 1 -m megatron_demix.commands.train --config X --mixture-runs runs.jsonl --component 0

Flags named like Megatron-LM's override the experiment's `training:` section. Defaults:
`--save`/`--load` = <work_dir>/checkpoints/<model>, `--pretrained-checkpoint` = the base's save
directory for a component (weights only, any TP/PP), logs in <work_dir>/logs/train/<model>/.
`--load` resumes (model, optimizer, scheduler, data position, RNG) when it holds a checkpoint.
With `model.from_hf`, `--component base` imports that Hugging Face model as the base (one process).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

TRAINING_SECTION_ONLY = {"train_iters"}
"""`--train-iters` is the budget of the model being trained (base or component), not a field override."""


def parse_args(argv=None) -> argparse.Namespace:
    from megatron_demix.config.flags import add_config_flags
    from megatron_demix.training.config import TrainingConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the experiment YAML")
    parser.add_argument("--component", required=True, help="'base', a candidate name, or a candidate index (SLURM array task)")
    group = parser.add_argument_group("training overrides (Megatron-LM names)")
    parser.set_defaults(training_fields=add_config_flags(group, TrainingConfig, section="training", exclude=TRAINING_SECTION_ONLY))
    group.add_argument("--train-iters", type=int, default=None, help="iteration budget (default: the config's; base_train_iters for the base)")
    paths = parser.add_argument_group("checkpoints and logs")
    paths.add_argument("--save", type=Path, default=None)
    paths.add_argument("--load", type=Path, default=None)
    paths.add_argument("--pretrained-checkpoint", type=Path, default=None, help="weights to start from when not resuming")
    paths.add_argument("--no-pretrained", action="store_true", help="start a component from random weights")
    paths.add_argument("--log-dir", type=Path, default=None)
    paths.add_argument("--mixture-runs", type=Path, default=None,
                       help="JSONL of models to train on mixtures (training/mixture_runs.py); --component is then a line index or id")
    paths.add_argument("--stop-after-iters", type=int, default=None, help="leave after this iteration without saving (preemption drill)")
    paths.add_argument("--exit-signal-handler", action="store_true", help="on SIGTERM save after the current iteration and exit 0")
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    from megatron_demix.config.base import replace
    from megatron_demix.experiment import load_experiment
    from megatron_demix.config.flags import flag_overrides
    from megatron_demix.training.mixture_runs import select_mixture_run
    from megatron_demix.training.run_options import RunOptions, already_trained, resolve_model

    experiment = load_experiment(args.config)
    overrides = flag_overrides(args, args.training_fields)
    if args.train_iters is not None and args.component != "base":
        overrides["train_iters"] = args.train_iters
    if args.train_iters is not None and "train_tokens" not in overrides:
        overrides["train_tokens"] = None  # an explicit iteration budget wins over a token budget
    training = replace(experiment.training, where="command line", **overrides)
    experiment = dataclasses.replace(experiment, training=training)  # re-runs the cross-section checks
    on_mixture = select_mixture_run(args.mixture_runs, args.component) if args.mixture_runs else None
    if on_mixture and on_mixture.seed is not None:
        experiment = dataclasses.replace(experiment, training=replace(experiment.training, where="--mixture-runs", seed=on_mixture.seed))
    model = on_mixture.id if on_mixture else resolve_model(experiment, args.component)
    if model == "base" and experiment.model.from_hf:
        from megatron_demix.hf.from_hf import import_base

        import_base(experiment, args.save)  # the base stage of an experiment that starts from a Hugging Face model
        return
    save = args.save or (Path(on_mixture.save) if on_mixture else None)
    run = RunOptions.defaults(
        experiment, model, save=save, load=args.load or save, pretrained=args.pretrained_checkpoint,
        train_iters=args.train_iters or (on_mixture and on_mixture.train_iters), log_dir=args.log_dir,
        stop_after_iters=args.stop_after_iters, exit_signal_handler=args.exit_signal_handler or None,
        mixture=on_mixture and on_mixture.mixture,
    )
    if args.no_pretrained:
        run = dataclasses.replace(run, pretrained=None)
    done = already_trained(run)
    if done is not None:  # e.g. a requeued or resubmitted task: answered before torch is even imported
        if _first_rank():
            print(f"[{model}] {run.save} holds iteration {done} of {run.train_iters}: already trained, nothing to do", flush=True)
        return
    from megatron_demix.training.trainer import Trainer

    trainer = Trainer(experiment, run)
    try:
        trainer.train()
    finally:
        trainer.close()


def main(argv=None) -> int:
    """Exit 2 for bad input (printed once, by rank 0), 1 for a failed run (e.g. diverged), a traceback for a bug."""
    from megatron_demix.runtime.errors import run_command

    args = parse_args(argv)
    return run_command("train", train, args, quiet=not _first_rank())


def _first_rank() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


if __name__ == "__main__":  # required: dist_checkpointing.save forks worker processes
    from megatron_demix.runtime.errors import exit_process

    exit_process(main())
