"""Optional NVIDIA DALI loader for the training batches (`--dataloader dali`, `pip install -e .[dali]`).

    reader = DaliTrainReader(data, num_microbatches=2, first_iteration=0)
    for batch in reader.microbatches(0): ...      # then iteration 1, 2, ... in order

It reads exactly the samples the torch path reads, in the same order (see data/datasets.py), but
through a DALI pipeline whose `external_source` gathers the next microbatches on a background
thread while the model computes (prefetch_queue_depth). The pipeline runs on the CPU
(`device_id=None`) on every host, which is also how the tests run it on machines without a GPU;
batches are moved to the compute device by the trainer as on the torch path. Validation batches
always use the torch path (they are few and read out of order).
"""
from __future__ import annotations

import numpy
import torch

from megatron_demix.runtime import device

PREFETCH = 2
"""Microbatches DALI prepares ahead of the one being consumed."""


class DaliTrainReader:
    def __init__(self, data, *, num_microbatches: int, first_iteration: int, keys: tuple[str, ...]):
        try:
            from nvidia.dali import fn, pipeline_def
        except ImportError:
            raise ImportError(
                "--dataloader dali needs NVIDIA DALI: pip install -e .[dali] (or use --dataloader torch)"
            ) from None
        self.data, self.keys = data, keys
        self.num_microbatches = num_microbatches
        self.per_iteration = num_microbatches * data.micro_batch_size
        self.first_iteration = self.next_iteration = first_iteration

        @pipeline_def(batch_size=data.micro_batch_size, num_threads=1, device_id=None, prefetch_queue_depth=PREFETCH,
                      exec_dynamic=True)
        def pipeline():
            return tuple(fn.external_source(source=self._sample, num_outputs=len(keys), batch=False))

        self.pipeline = pipeline()
        self.pipeline.build()

    def _sample(self, info) -> tuple[numpy.ndarray, ...]:
        """The rank's k-th training sample since `first_iteration`, k = info.idx_in_epoch."""
        k = info.idx_in_epoch
        iteration = self.first_iteration + k // self.per_iteration
        index = self.data.train_sample_index(iteration, self.num_microbatches, k % self.per_iteration)
        sample = self.data.train[index % len(self.data.train)]
        return tuple(numpy.asarray(sample[key]) for key in self.keys)

    def microbatches(self, iteration: int):
        """This rank's microbatches of `iteration`; iterations must be read in order."""
        if iteration != self.next_iteration:
            raise RuntimeError(f"the DALI reader is at iteration {self.next_iteration}, asked for {iteration}")
        self.next_iteration += 1
        for _ in range(self.num_microbatches):
            outputs = self.pipeline.run()
            yield {key: torch.from_numpy(out.as_array()).to(device.device()) for key, out in zip(self.keys, outputs)}
