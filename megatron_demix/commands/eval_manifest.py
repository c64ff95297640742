"""Evaluate many proxies in one process: the components are loaded once, each mixture refills the model.

    python -m megatron_demix.commands.eval_manifest --config configs/demo.yaml --manifest round0.jsonl --output-dir runs/demo/evals
    python -m megatron_demix.commands.eval_manifest --config X.yaml --manifest M.jsonl --output-dir D --tasks demix_code_choice arc_easy
    python launch/eval_proxy.py ...       # the same, from a checkout
    # the search does not run this command: its array tasks evaluate in their own process (search/evaluate.py)

Manifest: one JSON object per line, {"id": "m0", "mixture": {"<candidate>": weight, ...}}, the
weights over every candidate dataset of the experiment, summing to 1. One result per mixture,
`<output-dir>/<id>.json` (megatron_demix/eval/proxies.py has its fields), written atomically;
a present result is reused when it is for the same mixture and models, so re-running a killed job
evaluates only the missing mixtures; an id the manifest now gives another mixture (or whose
components were retrained) is evaluated again, the log naming the stored mixture and the new one.
`--tasks` replaces eval.tasks (each named task is then its own domain). Offline: the built-in
tasks read local files; HF_DATASETS_OFFLINE=1 is set unless the environment says otherwise.
Exit status 2 for bad input (config, manifest, task names, checkpoints), 1 for a failure while running.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the experiment YAML")
    parser.add_argument("--manifest", required=True, type=Path, help="JSONL: {\"id\": ..., \"mixture\": {candidate: weight}} per line")
    parser.add_argument("--output-dir", required=True, type=Path, help="where <id>.json results go")
    parser.add_argument("--tasks", nargs="+", help="lm-eval task names (default: eval.tasks, else the built-in tasks)")
    return parser.parse_args(argv)


def read_manifest(path: Path) -> list[dict]:
    """The manifest's entries; a line that is not a JSON object fails naming the file and line."""
    from megatron_demix.eval.config import EvalInputError

    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise EvalInputError(f"--manifest {path}: cannot read it ({error.strerror})") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EvalInputError(f"--manifest {path} line {number}: not JSON ({error.msg})") from None
    if not entries:
        raise EvalInputError(f"--manifest {path}: no mixtures in it")
    return entries


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from megatron_demix.runtime.errors import run_command

    return run_command("eval_proxy", evaluate, args)


def evaluate(args) -> None:
    from megatron_demix.eval.proxies import check_mixtures, evaluate_mixtures
    from megatron_demix.experiment import load_experiment

    experiment = load_experiment(args.config)
    mixtures = read_manifest(args.manifest)
    lines = [n for n, line in enumerate(args.manifest.read_text().splitlines(), 1) if line.strip()]
    check_mixtures(experiment, mixtures, where=lambda i: f"--manifest {args.manifest} line {lines[i]}")
    evaluate_mixtures(experiment, mixtures, args.output_dir, args.tasks)


if __name__ == "__main__":
    from megatron_demix.runtime.errors import exit_process

    exit_process(main())
