"""Test tool run under torchrun: real training, instrumented from outside the trainer.

    torchrun --nproc-per-node 2 tests/training/throughput_tool.py syncs --config X.yaml --save DIR --out syncs.json
    torchrun --nproc-per-node 1 tests/training/throughput_tool.py save-as-gpu --config X.yaml --save DIR --stop-after 4

`syncs`: train the base with every device-to-host read counted (Tensor.item / tolist / bool / float /
int / cpu / numpy through a TorchFunctionMode, and torch.cuda.synchronize; less HOST_RESIDENT); writes, per iteration, the
reads made from the start of that iteration's step to the start of the next one (the last one up to
the end of `train()`, its validation and save included). `save-as-gpu`: train and save as a GPU host
would label and shape its RNG state (CUDA Philox states: 16 bytes, which the CPU generator refuses),
so that a plain launch can then resume it on this CPU host.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy}


HOST_RESIDENT = ("torch/optim/optimizer.py", "megatron/core/tensor_parallel/random.py", "torch/utils/data/dataloader.py")
"""Callers whose reads are of tensors that live on the host on every host kind, so no device sync: torch
Adam's per-parameter `step` counters (read by torch.optim.optimizer._get_value; torch keeps them on the
CPU for that reason), megatron's RNG tracker comparing the CPU generator's state before and after each
fork, and the DataLoader drawing its workers' base seed from the CPU generator (once, at the first
batch). On this CPU host every tensor is a host tensor, so these are told apart by their caller."""


class CountHostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not sys._getframe(1).f_code.co_filename.endswith(HOST_RESIDENT):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _trainer(args):
    from megatron_demix.experiment import load_experiment
    from megatron_demix.training.run_options import RunOptions
    from megatron_demix.training.trainer import Trainer

    experiment = load_experiment(args.config)
    run = RunOptions.defaults(experiment, "base", save=Path(args.save), log_dir=Path(args.save) / "logs",
                              stop_after_iters=args.stop_after)
    return Trainer(experiment, run)


def syncs(args) -> None:
    trainer = _trainer(args)
    counter = CountHostReads()
    synchronize = torch.cuda.synchronize

    def counted_synchronize(*a, **k):
        counter.count += 1
        return synchronize(*a, **k)

    torch.cuda.synchronize = counted_synchronize
    marks = []  # (iteration about to run, reads so far)
    step = trainer.train_step

    def marked_step():
        marks.append((trainer.iteration + 1, counter.count))
        return step()

    trainer.train_step = marked_step
    with counter:
        trainer.train()
    marks.append((None, counter.count))
    trainer.close()
    per_iteration = {it: after - before for (it, before), (_, after) in zip(marks, marks[1:])}
    if torch.distributed.get_rank() == 0:
        Path(args.out).write_text(json.dumps({"reads": per_iteration, "log_interval": trainer.training.log_interval,
                                              "num_workers": trainer.throughput.num_workers}))


PHILOX = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)
"""A CUDA generator state as torch.cuda.get_rng_state returns it on a GPU host: seed and offset, 8 bytes each."""


def save_as_gpu(args) -> None:
    from megatron_demix.training import run_state

    try:
        torch.set_rng_state(PHILOX)
    except RuntimeError:
        pass  # what handing a GPU host's state to this host's generators does
    else:
        raise AssertionError("the CPU generator took a CUDA state: the resume test would prove nothing")
    own = run_state.rng_state

    def as_a_gpu_host():
        state = own()
        return {**state, "host": "gpu", "cuda": PHILOX.clone(), "tracker": {k: PHILOX.clone() for k in state["tracker"]}}

    run_state.rng_state = as_a_gpu_host
    trainer = _trainer(args)
    trainer.train()
    trainer.close()


if __name__ == "__main__":  # required: dist_checkpointing.save forks worker processes
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["syncs", "save-as-gpu"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--save", required=True)
    parser.add_argument("--out")
    parser.add_argument("--stop-after", type=int)
    parsed = parser.parse_args()
    {"syncs": syncs, "save-as-gpu": save_as_gpu}[parsed.command](parsed)
