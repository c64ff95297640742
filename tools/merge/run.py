"""The MPI-distributed merge from a checkout: `python -m megatron_demix.commands.merge` (its docstring has the usage).

    mpiexec -n 4 python tools/merge/run.py --inputs A:1 B:1 C:2 --output OUT --dtype bf16 --verify
    python tools/merge/run.py --config experiment.yaml --mixture mixture.json --output OUT
    mpiexec -n 2 python tools/merge/run.py --config experiment.yaml --mixtures mixtures.jsonl --output proxies/   # one read, OUT/<id> each
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

if __name__ == "__main__":
    from megatron_demix.commands.merge import main

    sys.exit(main())
