"""Differences between the supported megatron-core releases (0.16.1 to 0.19.x) that need code, in one place.

Checkpoints move both ways between the releases (tests/runtime/test_versions.py). One thing stops
them: up to 0.18, `dist_checkpointing.save` writes the non-sharded ("common") state to `common.pt`;
0.19 stores it inside the torch_dist checkpoint, as the ShardedObject `common_state`, and reads
both. So on a release whose loader knows only `common.pt` (its `TorchCommonLoadStrategy`), a
checkpoint without `common.pt` has its common state read from that object instead, the way 0.19
reads it. Every load goes through that method: `load_common_state_dict`, and `load`'s first step.

Also release-dependent, kept where it is used: TransformerConfig's CUDA-graph field (model/gpt.py).
"""
from __future__ import annotations

import io
import os

from megatron_demix.runtime.import_hooks import after_import

COMMON_STRATEGY_MODULE = "megatron.core.dist_checkpointing.strategies.common"
COMMON_STATE_OBJECT = "common_state"
"""The key under which megatron-core 0.19 saves the common state (a ShardedObject of shape (1,))."""


def read_common_state_object(checkpoint_dir: str) -> dict:
    """The common state that megatron-core 0.19 saved inside the torch_dist checkpoint at `checkpoint_dir`."""
    import torch
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    key = ShardedObject(COMMON_STATE_OBJECT, None, (1,), (0,)).unique_key
    state = {key: io.BytesIO()}
    dcp.load(state, storage_reader=dcp.FileSystemReader(checkpoint_dir), no_dist=True)
    loaded = state[key]  # DCP hands back the bytes, or the object already unpickled (as 0.19 allows for)
    if isinstance(loaded, io.BytesIO):
        loaded.seek(0)
        loaded = torch.load(loaded, weights_only=True)
    return loaded[0]


def _read_newer_common_state(strategies_module) -> None:
    loader = getattr(strategies_module, "TorchCommonLoadStrategy", None)
    if loader is None or getattr(loader.load_common, "reads_common_state_object", False):
        return  # 0.19 and later read it themselves; or already installed
    load_common = loader.load_common

    def load_common_or_object(self, checkpoint_dir):
        if os.path.exists(os.path.join(checkpoint_dir, strategies_module.COMMON_STATE_FNAME)):
            return load_common(self, checkpoint_dir)
        return read_common_state_object(str(checkpoint_dir))

    load_common_or_object.reads_common_state_object = True
    loader.load_common = load_common_or_object


def read_newer_checkpoints() -> None:
    """Let an older megatron-core load checkpoints written by 0.19 (idempotent; nothing on 0.19)."""
    after_import(COMMON_STRATEGY_MODULE, _read_newer_common_state)
