"""The DeMix mixture search: sample a pool, evaluate proxies in rounds of array jobs, fit, answer.

    python -m megatron_demix.commands.search --config configs/demo.yaml         # executor from cluster.executor
    python -m megatron_demix.commands.search --config configs/paper.yaml --executor slurm
    python -m megatron_demix.commands.search --config configs/paper.yaml --resume   # continue after a kill / preemption
    python -m megatron_demix.commands.search --config configs/paper.yaml --rounds-more 2   # a finished search, 2 rounds more
    sbatch slurm/search.sh configs/paper.yaml                              # the driver as a job
    python tools/search/run.py ...                                         # the same, from a checkout

Writes <work_dir>/search/ (state, final_mixture.json, report/). Settings: the experiment's
`search:` and `eval:` sections. Exit status 2 for bad input or configuration, 1 when the search
stops (too few evaluations succeeded; the message names the failures and their logs).
A candidate added to the experiment's datasets (its component trained: `demix train`) joins the search
on --resume, every earlier evaluation kept (search/driver.py).
"""
import argparse
import json
import logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. configs/demo.yaml)")
    parser.add_argument("--executor", choices=("auto", "local", "slurm"), help="where evaluations run (default: cluster.executor)")
    parser.add_argument("--resume", action="store_true", help="continue the search in <work_dir>/search/ instead of refusing to touch it")
    add_extension_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from megatron_demix.runtime.errors import run_command

    return run_command("search", search, args)


def add_extension_arguments(parser: argparse.ArgumentParser) -> None:
    """--rounds-more / --round-size, shared with `demix run`."""
    parser.add_argument("--rounds-more", type=int, default=0, metavar="N",
                        help="N more rounds on the search's state (a finished one included; implies --resume), then the"
                             " answer chosen and evaluated again and the report rewritten; a run killed during them"
                             " continues without the flag (with it, N more again)")
    parser.add_argument("--round-size", type=int, default=None, metavar="M",
                        help="mixtures per added round (default: the last configured round's, search.round_sizes)")


def check_extension_arguments(args) -> None:
    from megatron_demix.config.base import fail

    if args.rounds_more < 0:
        fail("--rounds-more", f"{args.rounds_more} must be >= 0")
    if args.round_size is not None and (args.round_size < 1 or not args.rounds_more):
        fail("--round-size", f"{args.round_size}: give a size >= 1, together with --rounds-more N")


def search(args) -> None:
    from megatron_demix.cluster.executor import make_executor
    from megatron_demix.config.base import replace
    from megatron_demix.cli import load_experiment_file
    from megatron_demix.experiment import dump_experiment
    from megatron_demix.pipeline import claim_work_dir
    from megatron_demix.search.driver import check_resumable, run_search
    from megatron_demix.search.state import SearchPaths

    check_extension_arguments(args)
    args.resume = args.resume or args.rounds_more > 0
    experiment = load_experiment_file(args.config)
    if args.executor:
        experiment = replace(experiment, cluster=replace(experiment.cluster, executor=args.executor))
    claim_work_dir(experiment, "search")  # the only run there, on components made with these settings
    check_resumable(experiment, args.resume)  # before touching the work dir: running tasks read its experiment.yaml
    resolved = experiment.paths.root / "experiment.yaml"  # every evaluation task reads this copy (as `demix` jobs do)
    dump_experiment(experiment, resolved)
    paths = SearchPaths.of(experiment)
    answer = run_search(experiment, resolved, make_executor(experiment.cluster, paths.root / "logs"), resume=args.resume,
                        more_rounds=args.rounds_more, round_size=args.round_size)
    print(json.dumps({"mixture": answer["mixture"], "predicted": answer["predicted"]["score"],
                      "measured": (answer["measured"] or {}).get("score")}, indent=1))
    print(f"report: {paths.root / 'report'}")


if __name__ == "__main__":
    from megatron_demix.runtime.errors import exit_process

    exit_process(main())
