"""Held-out loss per domain of one or more checkpoints (eval/loss.py), as JSON {checkpoint: {domain: loss}}.

    python -m megatron_demix.commands.eval_loss --config configs/demo.yaml --output losses.json \
        --checkpoint runs/demo/checkpoints/base --checkpoint runs/demo/proxies/prior
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    from megatron_demix.eval.loss import domain_losses
    from megatron_demix.experiment import load_experiment
    from megatron_demix.runtime.files import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", action="append", required=True, type=Path, help="save root, iter dir or torch_dist dir (repeatable)")
    parser.add_argument("--samples", type=int, default=64, help="validation sequences per domain")
    parser.add_argument("--output", type=Path, required=True, help="JSON {checkpoint: {domain: loss}}")
    args = parser.parse_args(argv)
    results = domain_losses(load_experiment(args.config), args.checkpoint, args.samples)
    atomic_write_json(args.output, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
