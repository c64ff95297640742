"""The DeMix mixture search from a checkout: `python -m megatron_demix.commands.search` (its docstring has the usage).

    python tools/search/run.py --config configs/demo.yaml [--executor slurm] [--resume]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

if __name__ == "__main__":
    from megatron_demix.runtime.errors import exit_process
    from megatron_demix.commands.search import main

    exit_process(main())
