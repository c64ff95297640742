"""Training batches through a torch DataLoader: read ahead by worker processes, copied without blocking.

    loader = TrainLoader(data, num_microbatches=2, first_iteration=0, end_iteration=100, throughput=settings)
    for batch in loader.microbatches(0): ...      # then iteration 1, 2, ... in order

The samples and their order are exactly those of `TrainingData.train_microbatches` (data/datasets.py):
item k of the loader is the (k mod M)-th microbatch of iteration first + k // M, so a resume needs only
the iteration. As Megatron-LM's loader (its --num-workers 2, pinned memory, persistent workers,
`.cuda(non_blocking=True)`): with workers the next microbatches are read while the model computes;
on GPU hosts they land in pinned memory and the copy to the device does not block the host. Settings
per host: runtime/device.py `throughput_settings`.
"""
from __future__ import annotations

import signal

import torch

from megatron_demix.data.datasets import BATCH_KEYS
from megatron_demix.runtime import device


class _Microbatches(torch.utils.data.Dataset):
    """Item k: this data-parallel rank's k-th microbatch from `first_iteration` on, collated (CPU tensors)."""

    def __init__(self, data, num_microbatches: int, first_iteration: int, end_iteration: int):
        self.data, self.num_microbatches = data, num_microbatches
        self.first_iteration, self.length = first_iteration, (end_iteration - first_iteration) * num_microbatches
        # Asked once, in the training process: workers have no process group of their own.
        self.first_samples = [data.train_sample_index(0, num_microbatches, m * data.micro_batch_size)
                              for m in range(num_microbatches)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        iteration, m = divmod(k, self.num_microbatches)
        first = (self.first_iteration + iteration) * self.data.global_batch_size + self.first_samples[m]
        train = self.data.train
        samples = [train[(first + i) % len(train)] for i in range(self.data.micro_batch_size)]
        return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in BATCH_KEYS}


def _ignore_sigterm(_worker_id: int) -> None:
    """SLURM signals every process of a job step, loader workers included (scancel, requeue, the time
    limit): a worker killed by it makes the DataLoader raise in the trainer before its SIGTERM save. The
    trainer alone decides when to stop; workers end with the loader (`TrainLoader.close`), when the trainer
    process is gone (torch's worker watchdog), or by SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainLoader:
    def __init__(self, data, *, num_microbatches: int, first_iteration: int, end_iteration: int, throughput: device.Throughput):
        self.num_microbatches, self.next_iteration = num_microbatches, first_iteration
        workers = throughput.num_workers
        self.loader = torch.utils.data.DataLoader(
            _Microbatches(data, num_microbatches, first_iteration, end_iteration), batch_size=None, shuffle=False,
            num_workers=workers, pin_memory=throughput.pin_memory, persistent_workers=workers > 0,
            worker_init_fn=_ignore_sigterm if workers else None,
        )
        self._batches = None
        self.device = device.device()

    def microbatches(self, iteration: int):
        """This rank's microbatches of `iteration`, on the device; iterations must be read in order."""
        if iteration != self.next_iteration:
            raise RuntimeError(f"the training loader is at iteration {self.next_iteration}, asked for {iteration}")
        if self._batches is None:
            self._batches = iter(self.loader)  # starts the workers at the first use, not at construction
        self.next_iteration += 1
        for _ in range(self.num_microbatches):
            yield {key: value.to(self.device, non_blocking=True) for key, value in next(self._batches).items()}

    def close(self) -> None:
        """Stop the workers now (they ignore SIGTERM, so they are not left to the interpreter's exit)."""
        if self._batches is not None and hasattr(self._batches, "_shutdown_workers"):
            self._batches._shutdown_workers()
        self._batches = None
