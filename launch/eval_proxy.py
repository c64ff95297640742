"""Evaluate many proxies in one process, from a checkout: `python -m megatron_demix.commands.eval_manifest` (its
docstring has the manifest's format and the result files).

    python launch/eval_proxy.py --config configs/demo.yaml --manifest round0.jsonl --output-dir runs/demo/evals
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

if __name__ == "__main__":
    from megatron_demix.commands.eval_manifest import main
    from megatron_demix.runtime.errors import exit_process

    exit_process(main())
