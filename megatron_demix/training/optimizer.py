"""Data-parallel wrapper, optimizer and LR schedule: the one place where GPU and CPU training differ.

    model = wrap_data_parallel(gpt, training)          # megatron-core DDP on every host
    wire_overlap(model, gpt.config)                     # its hooks for megatron-core's schedules
    optimizer = build_optimizer(model, training)        # Megatron's on GPU, torch AdamW on CPU
    scheduler = build_scheduler(optimizer, training, train_iters)

Which path runs where:
- GPU host: megatron-core `DistributedDataParallel` with the distributed optimizer (Adam state
  sharded over data-parallel ranks), `get_megatron_optimizer` (bf16 params, fp32 main params,
  grad clipping inside), gradient reduce and parameter gather overlapped. This is what Megatron-LM
  runs with its GPT recipes' flags.
- CPU host: the same DDP wrapper (grads land in its fp32 `main_grad` buffers and are reduced
  over data-parallel ranks the same way), but Megatron's optimizer classes assert CUDA tensor
  types, so `CpuAdamW` steps a plain `torch.optim.AdamW` on those buffers and clips with
  megatron-core's own grad-norm functions (model-parallel aware). Its checkpoint state uses
  megatron-core's sharding helpers, so CPU checkpoints have the Megatron optimizer-state keys.
Both expose what the trainer uses: `step() -> (ok, grad_norm, _)`, `zero_grad()` and
`param_groups`; checkpointing goes through `optimizer_sharded_state_dict` and
`load_optimizer_state`, which work for both (and cover megatron-core 0.16's torch-Adam fallback
on GPU hosts without Apex or Transformer Engine).
"""
from __future__ import annotations

from itertools import chain

import torch

from megatron_demix.runtime import device


CHECKPOINT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
"""How the distributed optimizer lays out its checkpoint state (Megatron-LM's default): every rank
writes its own buffers, in parallel; a resume may change DP but not TP/PP (the model weights
themselves reshard freely). megatron-core 0.16 no longer saves its older default layout."""


def _uses_megatron_optimizer(gpu: bool | None = None) -> bool:
    return device.host_kind(gpu) == "gpu"


def ddp_config(training, *, gpu: bool | None = None):
    """megatron-core's DistributedDataParallelConfig for this host (runtime/device.py `throughput_settings`):
    on GPU hosts the distributed optimizer with the gradient reduce-scatter overlapped with backward and
    the parameter all-gather with the next forward (aligned across pipeline stages, as Megatron-LM's
    defaults --align-grad-reduce / --align-param-gather do); on CPU hosts neither."""
    from megatron.core.distributed import DistributedDataParallelConfig

    settings = device.throughput_settings(training, gpu=gpu)
    distributed_optimizer = _uses_megatron_optimizer(gpu)
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=settings.overlap_grad_reduce,
        overlap_param_gather=settings.overlap_param_gather and distributed_optimizer,
        align_param_gather=settings.overlap_param_gather and distributed_optimizer,
        use_distributed_optimizer=distributed_optimizer,
    )


def wrap_data_parallel(model, training):
    """Megatron DDP: grads reduced over data-parallel ranks (fp32 buffers), after the last microbatch or
    overlapped with its backward (`ddp_config`)."""
    from megatron.core.distributed import DistributedDataParallel

    return DistributedDataParallel(config=model.config, ddp_config=ddp_config(training), module=model)


def wire_overlap(model, config) -> None:
    """Hand megatron-core's schedules the hooks of the DDP wrapper, as Megatron-LM's `setup_model_and_optimizer`
    does: no grad sync until the last microbatch; with overlap, the grad reduce and (aligned) parameter
    gather started by the schedule; then the DP reduction and the tied-embedding one across stages."""
    from megatron.core.distributed import finalize_model_grads

    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    if model.ddp_config.overlap_grad_reduce:
        config.grad_sync_func = model.start_grad_sync
    if model.ddp_config.overlap_param_gather:
        config.param_sync_func = model.start_param_sync


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Megatron's rule: biases and norm weights (1-D tensors) are not decayed."""
    return param.ndim == 1 or name.endswith(".bias")


class CpuAdamW:
    """torch AdamW over megatron-core DDP grad buffers, with Megatron-style clipping (CPU hosts)."""

    def __init__(self, model, training):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        groups = [
            {"params": [p for n, p in named if not _no_weight_decay(n, p)], "weight_decay": training.weight_decay},
            # wd_mult: the LR scheduler resets weight_decay every step from its own value times this.
            {"params": [p for n, p in named if _no_weight_decay(n, p)], "weight_decay": 0.0, "wd_mult": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=training.lr, betas=(training.adam_beta1, training.adam_beta2), eps=1e-8
        )
        self.clip_grad = training.clip_grad

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None

    def step(self):
        from megatron.core import parallel_state, tensor_parallel
        from megatron.core.transformer.module import param_is_not_shared

        for p in self.params:
            p.grad = p.main_grad
        # Count each weight once: skip tied copies and tensor-parallel replicas, then sum over
        # the model-parallel group (megatron-core's get_grad_norm_fp32, which without Transformer Engine
        # hands back a float: a host sync at every step; here the norm stays a tensor).
        unique = [p.grad for p in self.params if param_is_not_shared(p) and tensor_parallel.param_is_not_tensor_parallel_duplicate(p)]
        squares = torch.stack(torch._foreach_norm(unique)).square().sum() if unique else torch.zeros(())
        torch.distributed.all_reduce(squares, group=parallel_state.get_model_parallel_group())
        grad_norm = squares.sqrt()
        if self.clip_grad > 0:
            # Megatron's clip_grad_by_total_norm_fp32 formula (it asserts CUDA tensors), without asking the host
            # whether to clip: a coefficient of 1 leaves the grads as they are.
            torch._foreach_mul_([p.grad for p in self.params], (self.clip_grad / (grad_norm + 1e-6)).clamp(max=1.0))
        self.optimizer.step()
        return True, grad_norm, None

    def _init_state(self):
        """Create AdamW's lazily-made state so a checkpoint can be loaded into it."""
        for p in self.params:
            state = self.optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)

    def sharded_state_dict(self, model_sharded_state_dict, is_loading: bool = False, metadata: dict | None = None):
        from megatron.core.dist_checkpointing.optimizer import (
            get_param_id_to_sharded_param_map,
            optim_state_to_sharding_state,
        )

        if is_loading:
            self._init_state()
        state = self.optimizer.state_dict()
        id_map = get_param_id_to_sharded_param_map(
            model_sharded_state_dict, chain.from_iterable(g["params"] for g in self.optimizer.param_groups)
        )
        # AdamW keeps one step counter per parameter, all equal: store it once (as Megatron does).
        steps = {float(s["step"]) for s in state["state"].values()}
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["state"]["common_step"] = steps.pop() if steps else 0.0
        return {"optimizer": state}

    def load_state_dict(self, state_dict):
        state = state_dict["optimizer"]
        # Non-tensor state comes from rank 0's common.pt: its parameter-group index lists belong to
        # rank 0's pipeline stage, so every rank puts back its own.
        for saved, own in zip(state["param_groups"], self.optimizer.state_dict()["param_groups"]):
            saved["params"] = own["params"]
        step = state["state"].pop("common_step")
        for param_state in state["state"].values():
            param_state["step"] = torch.tensor(float(step))
        self.optimizer.load_state_dict(state)


def build_optimizer(model, training):
    if not _uses_megatron_optimizer():
        return CpuAdamW(model, training)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    dtype = device.default_params_dtype(training.precision)
    config = OptimizerConfig(
        optimizer="adam",
        lr=training.lr,
        min_lr=training.min_lr,
        weight_decay=training.weight_decay,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        clip_grad=training.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=True,
        # Must equal the DDP wrapper's: the optimizer then leaves the all-gather to its forward pre-hooks.
        overlap_param_gather=model.ddp_config.overlap_param_gather,
    )
    return get_megatron_optimizer(config, [model])


def optimizer_sharded_state_dict(optimizer, model_sharded_state_dict, *, is_loading: bool) -> dict:
    """The optimizer's part of a checkpoint, on either path; `is_loading` makes a template to load into."""
    if is_loading and _uses_megatron_optimizer():
        for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
            # The template needs Adam's state to exist before the first step. Without Apex or TE
            # (torch Adam fallback) megatron-core 0.16's distributed optimizer also reads a
            # per-parameter `step`, which torch creates only when it first steps.
            if inner.init_state_fn is not None:
                inner.init_state_fn(inner.optimizer, inner.config)
            for state in inner.optimizer.state.values():
                state.setdefault("step", torch.tensor(0.0))
    return optimizer.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading, metadata=CHECKPOINT_METADATA)


def load_optimizer_state(optimizer, state_dict: dict) -> None:
    """Load what `optimizer_sharded_state_dict(..., is_loading=True)` was filled with."""
    optimizer.load_state_dict(state_dict)
    if not _uses_megatron_optimizer():
        return
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(inner.optimizer, torch.optim.Adam):
            # torch Adam fallback: megatron-core 0.16 restores the step count into the parameter
            # groups only, while torch Adam reads it per parameter (0 would redo bias correction).
            for group in inner.optimizer.param_groups:
                for p in group["params"]:
                    if "step" in group and p in inner.optimizer.state:
                        inner.optimizer.state[p]["step"] = torch.tensor(float(group["step"]))


def build_scheduler(optimizer, training, train_iters: int):
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last iteration (the paper's schedule)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup = min(training.lr_warmup_iters, max(train_iters - 1, 0))
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=training.lr,
        min_lr=training.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=train_iters,
        lr_decay_style="cosine",
        start_wd=training.weight_decay,
        end_wd=training.weight_decay,
        wd_incr_steps=train_iters,
        wd_incr_style="constant",
    )
