"""Train the base or one component model, from a checkout: `megatron_demix.commands.train` (its docstring has
the usage; `torchrun ... -m megatron_demix.commands.train` where the package is installed).

    torchrun --nproc-per-node 2 launch/train_component.py --config configs/demo.yaml --component base \
        --tensor-model-parallel-size 2
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_demix.commands.train import main, parse_args  # noqa: E402,F401  (parse_args: tests build its flags)

if __name__ == "__main__":  # required: dist_checkpointing.save forks worker processes
    from megatron_demix.runtime.errors import exit_process

    exit_process(main())
