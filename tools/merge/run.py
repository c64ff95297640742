"""Merge Megatron checkpoints into one (a DeMix proxy): linear or task arithmetic, on 1..N MPI ranks.

    python tools/merge/run.py --inputs ckpt/code:0.3 ckpt/math:0.7 --output proxies/p0
    mpiexec -n 4 python tools/merge/run.py --inputs A:1 B:1 C:2 --output OUT --dtype bf16 --verify
    srun --mpi=pmi2 -n 4 python tools/merge/run.py ...                # inside a SLURM allocation
    python tools/merge/run.py --method task_arithmetic --base ckpt/base --scale 0.8 --inputs A:1 B:1 --output OUT
    python tools/merge/run.py --config experiment.yaml --mixture mixture.json --output OUT

A DIR is a save root (with latest_checkpointed_iteration.txt), an `iter_*` directory or a bare
torch_dist (or legacy mp_rank_*) directory. `--mixture` is a JSON object {component: weight}
naming every candidate dataset of the experiment; component checkpoints, the base, and the
method/scale/dtype/normalize defaults then come from the experiment file. Exit status 1 on
every rank for bad input, with the error on rank 0's stderr.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from megatron_demix.merge.mpi import LaunchError, world  # noqa: E402  (light: no torch)


def parse_input(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DIR:WEIGHT, e.g. ckpt/code:0.5")
    try:
        return path, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: weight {weight!r} is not a number (expected DIR:WEIGHT)") from None


def parse_args(argv=None) -> argparse.Namespace:
    from megatron_demix.config.flags import add_config_flags
    from megatron_demix.merge.config import MergeConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", type=parse_input, metavar="DIR:WEIGHT", help="checkpoints and their weights")
    parser.add_argument("--output", required=True, help="save root to create (iter_* + tracker)")
    parser.add_argument("--base", help="base checkpoint for task_arithmetic")
    group = parser.add_argument_group("merge settings (default: the experiment's merge section with --config, else its defaults)")
    parser.set_defaults(merge_fields=add_config_flags(group, MergeConfig, section="merge", exclude={"ranks"}))
    parser.add_argument("--verify", action="store_true", help="re-read a sample of output chunks and compare with a recomputation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--mixture", help="mixture JSON {component: weight}; needs --config")
    parser.add_argument("--config", help="experiment YAML (with --mixture)")
    args = parser.parse_args(argv)
    if bool(args.mixture) != bool(args.config):
        parser.error("--mixture and --config go together (the experiment names the component checkpoints)")
    if bool(args.inputs) == bool(args.mixture):
        parser.error("give either --inputs DIR:WEIGHT ... or --mixture FILE --config FILE")
    return args


def merge_kwargs(args) -> dict:
    """merge() arguments from the flags, over the experiment's merge section (--mixture) or MergeConfig's defaults."""
    from megatron_demix.config.base import replace
    from megatron_demix.config.flags import flag_overrides
    from megatron_demix.merge.config import MergeConfig

    base = None
    if args.mixture:
        from megatron_demix.experiment import load_experiment
        from megatron_demix.merge.mixture import mixture_inputs

        experiment = load_experiment(args.config)
        inputs, weights, base = mixture_inputs(experiment, args.mixture)
        settings = experiment.merge
    else:
        inputs, weights = [p for p, _ in args.inputs], [w for _, w in args.inputs]
        settings = MergeConfig()
    settings = replace(settings, where="command line", **flag_overrides(args, args.merge_fields))
    if args.base is not None:
        base = args.base
    elif settings.method != "task_arithmetic":
        base = None
    return dict(inputs=inputs, weights=weights, output=args.output, verify=args.verify, overwrite=args.overwrite,
                method=settings.method, scale=settings.scale, dtype=settings.dtype, normalize=settings.normalize, base=base)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_demix.runtime.errors import FAILED, run_command

    try:
        comm = world()
    except LaunchError as error:
        print(f"merge: error: {error}", file=sys.stderr)
        return FAILED
    # Every rank fails together with the same message; rank 0 prints it.
    return run_command("merge", run_merge, args, comm, quiet=comm.rank != 0)


def run_merge(args, comm) -> None:
    from megatron_demix.merge.engine import merge

    merge(**merge_kwargs(args), comm=comm)


if __name__ == "__main__":
    sys.exit(main())
