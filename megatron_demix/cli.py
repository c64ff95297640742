"""`demix`: one command per pipeline stage, all driven by the experiment file.

    demix check --config configs/demo.yaml        # validate the experiment file, print its job layout
    demix prepare --config configs/demo.yaml      # tokenizer + Megatron indexed datasets, here
    demix train --config configs/demo.yaml        # prepare job, base, then the components (SLURM array or local)
    demix run --config configs/demo.yaml          # everything: prepare, train, search; the mixture and a report
    demix run --config X --submit                 # the same chain submitted to SLURM at once; then:
    demix status --config X                       # stage, jobs, search rounds, best mixture so far
    demix validate --config X                     # proxy fidelity against trained reference models
    demix run --config X --dry-run                # the jobs it would submit and the compute they need
    demix run --config X --rounds-more 2          # a finished search, 2 more rounds and a new answer
    demix export --checkpoint DIR --output HF     # a Hugging Face model directory (hf/export.py); import-hf: back

Stages register themselves in `COMMANDS` (name -> (help, add_arguments, run)); a new stage adds
one entry, not a branch. Exit status (runtime/errors.py): 2 for a bad experiment file or flag,
1 for a failure while running (a job failed), a traceback only for a bug.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import NamedTuple

from megatron_demix.hf import commands as hf_commands
from megatron_demix.runtime.errors import exit_process, run_command
from megatron_demix.runtime.files import read_json


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. configs/demo.yaml)")
    parser.add_argument("--work-dir", default=None, help="override the experiment's work_dir")


def load_experiment_file(path, overrides: dict | None = None):
    """The experiment file a user wrote, as every command reads it: `model.from_hf` expanded from the Hugging
    Face directory's config.json and tokenizer (hf/from_hf.py), then validated (experiment.py)."""
    from megatron_demix.experiment import experiment_from_dict, read_experiment_file

    data = read_experiment_file(path, overrides)
    if isinstance(data.get("model"), dict) and data["model"].get("from_hf") is not None:
        from megatron_demix.hf.from_hf import expand_from_hf  # reads config.json with transformers: only when asked

        data = expand_from_hf(data, str(path))
    return experiment_from_dict(data, str(path))


def _load(args):
    return load_experiment_file(args.config, {"work_dir": args.work_dir} if args.work_dir else None)


def _run_export(args) -> None:
    hf_commands.run_export(args, load_experiment_file(args.config) if args.config is not None else None)


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
    prior = read_json(experiment.paths.token_prior, "the token prior", "delete it and run demix prepare again")
    print("token prior: " + ", ".join(f"{k} {v:.3f}" for k, v in prior.items()))
    print(f"prepared data in {experiment.paths.data}")


def _jobs_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("--executor", choices=("auto", "local", "slurm"), default=None,
                        help="where jobs run (default: cluster.executor; auto = SLURM when a cluster answers)")
    parser.add_argument("--ranks", type=int, default=None,
                        help="processes per training job (default: cluster.stages.train nodes x ntasks_per_node,"
                             " else tensor x pipeline parallel size)")
    parser.add_argument("--rerun-from", metavar="STAGE", default=None,
                        help="remove the outputs of STAGE (base, components, search, validate) and of what is made from"
                             " them, and make them again: needed after a setting they were made with has changed")


def _experiment_for_jobs(args, write: bool = True):
    """The experiment, with its resolved copy written to the work dir (unless not `write`): every job reads that one file.
    Before writing, the work dir is claimed for the stages the command makes (pipeline.py `claim_work_dir`)."""
    from megatron_demix.cluster.executor import make_executor
    from megatron_demix.config.base import fail, replace
    from megatron_demix.experiment import dump_experiment

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
    if write:
        from megatron_demix.pipeline import COMMAND_STAGES, claim_work_dir

        claim_work_dir(experiment, COMMAND_STAGES[f"demix {args.command}"], args.rerun_from)
        dump_experiment(experiment, resolved)
    return experiment, resolved, make_executor(experiment.cluster, experiment.paths.logs)


def _run_train(args) -> None:
    from megatron_demix.pipeline import prepare_data, train_models

    experiment, resolved, executor = _experiment_for_jobs(args)
    prepare_data(resolved, executor)
    train_models(experiment, resolved, executor, args.ranks)
    print(f"checkpoints in {experiment.paths.checkpoints}")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _jobs_arguments(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--submit", action="store_true",
                      help="submit the whole chain to SLURM at once (afterok dependencies) and return; follow it with demix status")
    mode.add_argument("--dry-run", action="store_true",
                      help="print every job it would submit (sbatch flags, dependencies) and the compute estimate; submit nothing")
    from megatron_demix.commands.search import add_extension_arguments

    add_extension_arguments(parser)


def _run_run(args) -> None:
    from megatron_demix.commands.search import check_extension_arguments
    from megatron_demix.pipeline import plan_pipeline, run_pipeline, submit_pipeline

    check_extension_arguments(args)
    if args.rounds_more and (args.submit or args.dry_run):
        from megatron_demix.config.base import fail

        fail("--rounds-more", "extends a search in the foreground: leave out --submit / --dry-run")
    experiment, resolved, executor = _experiment_for_jobs(args, write=not args.dry_run)
    if args.dry_run:
        _print_plan(plan_pipeline(experiment, resolved, executor, args.ranks))
        return
    if args.submit:
        for job in submit_pipeline(experiment, resolved, executor, args.ranks):
            after = f" (after {', '.join(job['after'])})" if job["after"] else ""
            print(f"submitted {job['name']:<12} job {job['id']}{after}")
        print(f"follow it with: demix status --config {args.config}")
        return
    result = run_pipeline(experiment, resolved, executor, args.ranks, args.rounds_more, args.round_size)
    answer, prior = result["answer"], result["answer"]["prior"]
    print("\nfinal mixture (vs the token prior):")
    for name, share in answer["mixture"].items():
        print(f"  {name:<20} {share:6.3f}   prior {prior[name]:6.3f}   {share - prior[name]:+.3f}")
    print(f"chosen as: {answer['reason']}")
    measured, check = answer.get("measured") or {}, answer.get("check") or {}
    if measured:
        print(f"predicted best, its own proxy measured {measured['score']:.3f} (rank {measured['rank']} of {measured['of']});"
              f" best evaluated ({check.get('best_id', '-')}) {check.get('best_measured', float('nan')):.3f}:"
              f" {'kept' if check.get('kept', True) else 'replaced by ' + str(check.get('chosen_id'))}")
    stage = answer.get("next_stage") or {}
    if stage:
        print(f"next stage: Megatron-LM {stage['megatron_lm_flags']}\n  or this trainer: {stage['train_command']}")
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()) + f" ({type(executor).__name__})")
    print(f"report: {result['report']} (summary.md, final_mixture.json, *.png)")


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    _jobs_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what it would train and evaluate; run nothing")


def _run_validate(args) -> None:
    from megatron_demix.pipeline import prepare_data, train_models
    from megatron_demix.validate.run import describe_plan, plan_validate, run_validate

    experiment, resolved, executor = _experiment_for_jobs(args, write=not args.dry_run)
    print(describe_plan(plan_validate(experiment)), flush=True)
    if args.dry_run:
        return
    prepare_data(resolved, executor)
    train_models(experiment, resolved, executor, args.ranks)
    result = run_validate(experiment, resolved, executor, args.ranks)
    print(f"\n{'method':<18}{'tokens':>14}{'rho':>8}{'top-25%':>9}{'recovery':>10}   (macro over domains)")
    for r in (r for r in result["records"] if r["domain"] == "macro"):
        shown = ["n/a" if r[k] is None else f"{r[k]:.3f}" for k in ("rho", "top25_rho", "recovery")]
        print(f"{r['method']:<18}{r['train_tokens']:>14,}{shown[0]:>8}{shown[1]:>9}{shown[2]:>10}")
    for r in result.get("mixture_quality", []):
        print(f"mixture quality: {r['mixture']:<14} macro rank {r['macro_rank']:.2f} among the references ("
              + ", ".join(f"{d} {rank}" for d, rank in r["ranks"].items()) + ")")
    print(f"report: {result['report']} (fidelity.md, fidelity.csv, scores.csv, mixture_quality.md, *.png)")


def _print_plan(plan: dict) -> None:
    for job in plan["jobs"]:
        env = " ".join(f"{k}={v}" for k, v in job["env"].items())
        after = f"  [after {', '.join(job['after'])}]" if job["after"] else ""
        print(f"{job['name']}{after}\n  {env + ' ' if env else ''}sbatch {' '.join(job['sbatch'])} {job['script']} {' '.join(job['args'])}")
    c = plan["compute"]
    print(f"\nmodel: {c['parameters'] / 1e9:.2f}B parameters; training tokens: "
          + ", ".join(f"{k} {v / 1e9:.1f}B" for k, v in c["train_tokens"].items()))
    print(f"training compute: {c['train_flops']:.3g} FLOPs = {c['train_gpu_hours']:,.0f} GPU-hours ({c['assumption']})")
    ceiling = c["allocation_ceiling_gpu_hours"]
    print(f"evaluations: {c['evaluations']}; allocation ceilings (GPUs x time limits): "
          + ", ".join(f"{k} {v:,.0f} GPU-hours" if v is not None else f"{k} (no time limit set)" for k, v in ceiling.items()))


def _contamination_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_demix.data.contamination import WINDOW_WORDS

    _config_argument(parser)
    parser.add_argument("--words", type=int, default=WINDOW_WORDS, help="words per window")


def _run_contamination(args) -> None:
    from megatron_demix.eval.contamination import check_experiment

    report = check_experiment(_load(args), args.words)
    print(json.dumps(report, indent=2))
    if report["cross_corpus"]["overlaps"] or report["held_out_in_training"]["overlaps"]:
        exit_process(1)


def _run_status(args) -> None:
    from megatron_demix.pipeline import pipeline_status

    status = pipeline_status(_load(args))
    print(f"stage: {status['stage']}")
    print("models: " + ", ".join(f"{k} {v['iteration'] or 0}/{v['of']}" for k, v in status["models"].items()))
    for job in status["jobs"]:
        states = sorted({s.split()[0] for s in job["states"].values()}) or ["(no longer known to SLURM)"]
        print(f"job {job['name']:<12} {job['id']:<10} {', '.join(states)}")
    search = status["search"] or {}
    for r in search.get("rounds", []):
        print(f"search round {r['round']}: {r['done']}/{r['size']} evaluated, {r['failed']} failed, {r['pending']} pending")
    if search.get("planned"):
        print(f"search rounds planned: {search['planned']}")
    best = (search.get("final") or {}).get("mixture") or search.get("best_predicted_mixture")
    if best:
        label = "final mixture" if search.get("final") else "best predicted mixture so far"
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in best.items()))


COMMANDS: dict[str, Command] = {
    "check": Command("validate the experiment file (every section and their cross-checks) and print its job layout",
                     _config_argument, _run_check),
    "prepare": Command("tokenize the experiment's datasets into Megatron indexed datasets", _prepare_arguments, _run_prepare),
    "train": Command("train the base, then every component (array job)", _jobs_arguments, _run_train),
    "run": Command("the whole pipeline: prepare, base, components, search; ends with the mixture and a report",
                   _run_arguments, _run_run),
    "contamination": Command("check a prepared experiment by content: no document in two datasets, no held-out"
                             " evaluation text in any training split (exit 1 on any overlap)",
                             _contamination_arguments, _run_contamination),
    "status": Command("where a pipeline stands: stage, jobs, search rounds, the best mixture so far", _config_argument, _run_status),
    "validate": Command("proxy fidelity: train reference models and short proxies on sampled mixtures, compare with"
                        " the merged proxies (Spearman rho, top-25% rho, capability recovery)", _validate_arguments, _run_validate),
    "export": Command("write a checkpoint, or a mixture's proxy merged while streaming, as a Hugging Face model directory",
                      hf_commands.export_arguments, _run_export),
    "import-hf": Command("write a local Hugging Face Llama/Qwen2/Qwen3 model as a Megatron torch_dist checkpoint",
                         hf_commands.import_arguments, hf_commands.run_import),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="demix", description="DeMix data-mixture search on Megatron")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    exit_process(run_command(f"demix {args.command}", COMMANDS[args.command].run, args))


if __name__ == "__main__":
    main()
