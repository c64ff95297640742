"""Checkpoint merging: a proxy model is a weighted merge of component checkpoints (DeMix).

    from megatron_demix.merge import merge
    merge(["ckpt/code", "ckpt/math"], [0.3, 0.7], "proxies/p0")

Layout: `plan.py` what (chunks, sources, balance), `methods.py` how (linear, task arithmetic),
`io.py` bytes out to torch_dist files (reading: `checkpoint/torch_dist.py`), `mpi.py` ranks, `engine.py` the flow, `legacy.py`
the mp_rank_* format. The CLI is tools/merge/run.py. Names are imported lazily, so reading the
`merge:` config section (`merge.config`) does not import torch.
"""


def __getattr__(name):
    if name in ("merge", "Summary"):
        from megatron_demix.merge import engine

        return getattr(engine, name)
    if name == "MergeError":
        from megatron_demix.merge.io import MergeError

        return MergeError
    raise AttributeError(f"module 'megatron_demix.merge' has no attribute {name!r}")
