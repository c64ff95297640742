"""Checkpoints across the supported megatron-core releases (0.16.1 to 0.19.x): the one difference that needs code.

Checkpoints move both ways between the releases (tests/runtime/test_versions.py). One thing stops
them: up to 0.18, `dist_checkpointing.save` writes the non-sharded ("common") state to `common.pt`;
0.19 stores it inside the torch_dist checkpoint, as the ShardedObject `common_state`, and reads
both. So on a release whose loader knows only `common.pt` (its `TorchCommonLoadStrategy`), a
checkpoint without `common.pt` has its common state read from that object instead
(checkpoint/torch_dist.py: read_common_state). Every load goes through that method:
`load_common_state_dict`, and `load`'s first step.

Also release-dependent, kept where it is used: TransformerConfig's CUDA-graph field (model/gpt.py).
"""
from __future__ import annotations

from megatron_demix.runtime.import_hooks import after_import

COMMON_STRATEGY_MODULE = "megatron.core.dist_checkpointing.strategies.common"


def _read_newer_common_state(strategies_module) -> None:
    loader = getattr(strategies_module, "TorchCommonLoadStrategy", None)
    if loader is None or getattr(loader.load_common, "reads_common_state_object", False):
        return  # 0.19 and later read it themselves; or already installed
    load_common = loader.load_common

    def load_common_or_object(self, checkpoint_dir):
        from megatron_demix.checkpoint.torch_dist import read_common_state  # common.pt, else 0.19's object (lazy: torch)

        state = read_common_state(checkpoint_dir)
        return load_common(self, checkpoint_dir) if state is None else state  # None: megatron's own error

    load_common_or_object.reads_common_state_object = True
    loader.load_common = load_common_or_object


def read_newer_checkpoints() -> None:
    """Let an older megatron-core load checkpoints written by 0.19 (idempotent; nothing on 0.19)."""
    after_import(COMMON_STRATEGY_MODULE, _read_newer_common_state)
