"""Test tool run under torchrun: inspect checkpoints from inside a real process group.

    torchrun --nproc-per-node 2 tests/training/train_tool.py logits --checkpoint DIR \
        --view 2 1 X.yaml tp2.pt --view 1 2 X.yaml pp2.pt
    torchrun --nproc-per-node 1 tests/training/train_tool.py first-step --config X.yaml --component code \
        --save DIR --out report.json

`logits`: for each `--view TP PP CONFIG OUT`, build the model of CONFIG at that TP/PP (the rest of
the processes data-parallel), load the weights of DIR and write the full-vocabulary logits of a
fixed batch (from the last pipeline stage, gathered over TP); one launch for all the views. `first-step`: build the component's
Trainer (which initialises from the base) and compare every local weight shard, before any step,
with the same region of the base checkpoint read as plain tensors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _setup(config: str, tp: int, pp: int):
    from megatron_demix.experiment import load_experiment
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.runtime.distributed import init_distributed
    from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel

    experiment = load_experiment(config)
    layout = init_distributed()  # once per process; the model-parallel groups are made again for each call
    initialize_model_parallel(ParallelDims(tp, pp, layout.world_size), seed=1)
    return experiment, load_tokenizer(experiment.paths.tokenizer)


def logits(args) -> None:
    for tp, pp, config, out in args.view:
        _view_logits(args.checkpoint, int(tp), int(pp), config, out)


def _view_logits(checkpoint: str, tp: int, pp: int, config: str, out: str) -> None:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.checkpoint.weights import load_weights

    experiment, tokenizer = _setup(config, tp, pp)
    model = build_gpt_model(experiment.model, tokenizer.vocab_size)
    load_weights(Path(checkpoint), model)
    model.eval()
    seq = experiment.model.seq_length
    tokens = torch.randint(0, tokenizer.vocab_size, (2, seq), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq).expand(2, seq)
    mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool)).logical_not().expand(2, 1, seq, seq)

    def forward_step(_iterator, model):
        return model(tokens, positions, mask), lambda output, non_loss_data=True: output

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
            seq_length=seq, micro_batch_size=2, forward_only=True, collect_non_loss_data=True,
        )
    if parallel_state.is_pipeline_last_stage():
        full = tensor_parallel.gather_from_tensor_model_parallel_region(outputs[0])
        if parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0:
            torch.save(full[..., : tokenizer.vocab_size].clone(), out)


def _global_region(plain: torch.Tensor, sharded) -> torch.Tensor:
    """The part of a whole checkpoint tensor that the ShardedTensor `sharded` holds locally."""
    prepend = sharded.prepend_axis_num
    index = tuple(slice(o, o + 1) for o in sharded.global_offset[:prepend]) + tuple(
        slice(o, o + n) for o, n in zip(sharded.global_offset[prepend:], sharded.local_shape)
    )
    return plain[index].reshape(sharded.local_shape)


def first_step(args) -> None:
    import dataclasses

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    from megatron_demix.checkpoint.layout import resolve_checkpoint
    from megatron_demix.experiment import load_experiment
    from megatron_demix.training.run_options import RunOptions, resolve_model
    from megatron_demix.training.trainer import Trainer

    experiment = load_experiment(args.config)
    training = dataclasses.replace(experiment.training, tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    experiment = dataclasses.replace(experiment, training=training)
    run = RunOptions.defaults(experiment, resolve_model(experiment, args.component), save=Path(args.save), load=Path(args.save), log_dir=Path(args.save) / "logs")
    trainer = Trainer(experiment, run)
    base = resolve_checkpoint(run.pretrained).path
    plain = dist_checkpointing.load_plain_tensors(str(base))
    local = trainer.gpt.sharded_state_dict()
    apply_factories(local)
    compared, max_diff = 0, 0.0
    for sharded in nested_values(local):
        if isinstance(sharded, ShardedTensor):
            expected = _global_region(plain[sharded.key], sharded)
            max_diff = max(max_diff, (sharded.data.float() - expected.float()).abs().max().item())
            compared += 1
    report = {"iteration": trainer.iteration, "compared": compared, "max_abs_diff": max_diff}
    if torch.distributed.get_rank() == 0:
        Path(args.out).write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["logits", "first-step"])
    parser.add_argument("--config")
    parser.add_argument("--checkpoint")
    parser.add_argument("--view", nargs=4, action="append", metavar=("TP", "PP", "CONFIG", "OUT"))
    parser.add_argument("--component", default="0")
    parser.add_argument("--save")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    {"logits": logits, "first-step": first_step}[args.mode](args)
    torch.distributed.barrier()


if __name__ == "__main__":
    sys.exit(main())
