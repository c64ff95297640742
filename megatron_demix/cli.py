"""`demix`: one command per pipeline stage, all driven by the experiment file.

    demix check --config configs/demo.yaml        # validate the experiment file, print its job layout
    demix prepare --config configs/demo.yaml      # tokenizer + Megatron indexed datasets, here
    demix train --config configs/demo.yaml        # prepare job, base, then the components (SLURM array or local)
    demix demo --config configs/demo.yaml         # prepare, train, merge proxies, per-domain losses

Stages register themselves in `COMMANDS` (name -> (help, add_arguments, run)); a new stage adds
one entry, not a branch. Exit status (runtime/errors.py): 2 for a bad experiment file or flag,
1 for a failure while running (a job failed), a traceback only for a bug.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import NamedTuple

from megatron_demix.runtime.errors import run_command


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. configs/demo.yaml)")
    parser.add_argument("--work-dir", default=None, help="override the experiment's work_dir")


def _load(args):
    from megatron_demix.config.experiment import load_experiment

    return load_experiment(args.config, {"work_dir": args.work_dir} if args.work_dir else None)


def _run_check(args) -> None:
    experiment = _load(args)
    training = experiment.training
    print(f"{args.config}: ok: {len(experiment.candidates)} candidates ({', '.join(d.name for d in experiment.candidates)});"
          f" training TP={training.tensor_model_parallel_size} PP={training.pipeline_model_parallel_size},"
          f" {experiment.train_ranks} process(es) per training job; merge on {experiment.merge.ranks} rank(s)")


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("--workers", type=int, default=None, help="tokenizer worker processes (default: prepare.workers)")


def _run_prepare(args) -> None:
    from megatron_demix.data.prepare import prepare

    experiment = _load(args)
    counts = prepare(experiment, workers=args.workers)
    print(f"{'dataset':<16}{'documents':>12}{'tokens':>14}{'tokens/s':>12}")
    for name, record in counts.items():
        print(f"{name:<16}{record['documents']:>12,}{record['tokens']:>14,}{record['tokens_per_second']:>12,}")
    prior = json.loads(experiment.paths.token_prior.read_text())
    print("token prior: " + ", ".join(f"{k} {v:.3f}" for k, v in prior.items()))
    print(f"prepared data in {experiment.paths.data}")


def _jobs_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("--executor", choices=("auto", "local", "slurm"), default=None,
                        help="where jobs run (default: cluster.executor; auto = SLURM when a cluster answers)")
    parser.add_argument("--ranks", type=int, default=None,
                        help="processes per training job (default: cluster.stages.train nodes x ntasks_per_node,"
                             " else tensor x pipeline parallel size)")


def _experiment_for_jobs(args):
    """The experiment, with its resolved copy written to the work dir: every job reads that one file."""
    from megatron_demix.cluster.executor import make_executor
    from megatron_demix.config.base import fail, replace
    from megatron_demix.config.experiment import dump_experiment

    experiment = _load(args)
    training = experiment.training
    replica = training.tensor_model_parallel_size * training.pipeline_model_parallel_size
    if args.ranks is None:
        args.ranks = experiment.train_ranks
    elif args.ranks < 1 or args.ranks % replica:
        fail("--ranks", f"{args.ranks} must be a positive multiple of tensor x pipeline parallel = {replica}"
             f" (the training section of {args.config})")
    elif experiment.cluster.resources("train").ntasks_per_node and args.ranks != experiment.train_ranks:
        fail("--ranks", f"{args.ranks} contradicts cluster.stages.train of {args.config} (nodes x ntasks_per_node ="
             f" {experiment.train_ranks}): leave --ranks out, or change the experiment")
    if args.executor:
        experiment = replace(experiment, cluster=replace(experiment.cluster, executor=args.executor))
    resolved = experiment.paths.root / "experiment.yaml"
    dump_experiment(experiment, resolved)
    return experiment, resolved, make_executor(experiment.cluster, experiment.paths.logs)


def _run_train(args) -> None:
    from megatron_demix.pipeline import prepare_data, train_models

    experiment, resolved, executor = _experiment_for_jobs(args)
    prepare_data(resolved, executor)
    train_models(experiment, resolved, executor, args.ranks)
    print(f"checkpoints in {experiment.paths.checkpoints}")


def _run_demo(args) -> None:
    from megatron_demix.pipeline import run_demo

    experiment, resolved, executor = _experiment_for_jobs(args)
    report = run_demo(experiment, resolved, executor, args.ranks)
    print(f"\n{report['table']}\n")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()) + f" ({report['executor']})")
    print(f"report: {experiment.paths.root / 'report'} (demo.txt, demo.json, losses.png)")


COMMANDS: dict[str, Command] = {
    "check": Command("validate the experiment file (every section and their cross-checks) and print its job layout",
                     _config_argument, _run_check),
    "prepare": Command("tokenize the experiment's datasets into Megatron indexed datasets", _prepare_arguments, _run_prepare),
    "train": Command("train the base, then every component (array job)", _jobs_arguments, _run_train),
    "demo": Command("run the whole pipeline on the experiment (the embedded default: configs/demo.yaml)", _jobs_arguments, _run_demo),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="demix", description="DeMix data-mixture search on Megatron")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    sys.exit(run_command(f"demix {args.command}", COMMANDS[args.command].run, args))


if __name__ == "__main__":
    main()
